"""The toolkit's shared code. Importing it first (every entry script does) sets one default before torch loads:

``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads of torch sleep instead of spinning. On the project's shared 2-core
machine spinning threads starve everything else on the cores: dataloader worker processes (training steps ran ~9x
slower) and other processes. Measured under load (load average 8-13 on 2 cores): val.py coco128 640 reported
1128 ms/image with libgomp's default spinning against 247-390 ms with PASSIVE. On an idle machine spinning is faster
for PyTorch alone (detect.py 49 vs 77 ms/image, issue 13's measurement), so an explicit ``OMP_WAIT_POLICY=ACTIVE``
(or any value) in the environment wins. ONNX Runtime and OpenVINO run their own pools; while only exported models
run, torch's pre- and post-processing uses one thread (``InferenceModel.runtime_threads``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
