"""monetpipe: an nnU-Net-style, self-configuring pipeline around MoNet.

Every stage is a plain function in its subpackage (``preprocessing``, ``training``, ``inference``,
``evaluation``, ``benchmark``); the ``monet_*`` commands are thin shells over them.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
