"""The toolkit's shared code. Importing it first (every entry script does) sets one process-wide default:

``OMP_WAIT_POLICY=PASSIVE`` before torch loads OpenMP, so idle OpenMP threads sleep instead of spinning. On a
CPU shared with dataloader workers or with another runtime in the same process (ONNX Runtime, OpenVINO), a
spinning thread burns its time slice at every barrier: measured on 2 cores, training steps ran ~9x slower, and
OpenVINO / ONNX Runtime inference after a torch op 46 -> 39 ms and 36 -> 28 ms per image at 640 once it sleeps.
An explicit setting in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
