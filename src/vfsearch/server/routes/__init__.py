"""The app's routes, one module per area, each an ``APIRouter`` that depends only on the HTTP
helpers, the wire models and the state (never on the app that includes it)."""

from .concepts import router as concepts
from .dataset import router as dataset
from .page import router as page
from .search import router as search
from .views import router as views

__all__ = ["ROUTERS"]

#: in include order (the page last: it owns ``/``)
ROUTERS = (dataset, search, views, concepts, page)
