"""``python -m blindtrain.worker --rendezvous tcp://HOST:PORT --rank R``: an untrusted worker process."""

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
