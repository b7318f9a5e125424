"""cdm-sync: a live, trustworthy graph of an OpenStack cloud's compute.

The package is layered (see doc/architecture.rst): ``model`` is the pure domain core, ``sync``
the service layer, and ``nova``, ``messaging``, ``sinks`` and ``cli`` are adapters at the edge.
"""

import warnings

# oslo.messaging pulls in oslo.service, whose eventlet backend warns on import; cdm-sync does not
# use eventlet (its listener runs on threads), so the warning is only noise for operators.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

__version__ = "0.1.0"
