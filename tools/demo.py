"""The end-to-end demo on the bundled corpus (README's main job): see megatron_tf/demo/run.py.

    python tools/demo.py [--out runs/demo] [--size tiny|small] [--arms none mask remove document]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.demo.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
