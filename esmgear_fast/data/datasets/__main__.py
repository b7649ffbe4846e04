"""``python -m esmgear_fast.data.datasets {EC,GO} PATH [--workers N]``: builds DeepFRI EC/GO caches ahead of a run
(see :func:`esmgear_fast.data.datasets.deepfri.main`)."""
import sys

from .deepfri import main

if __name__ == "__main__":
    sys.exit(main())
