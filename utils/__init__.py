"""The toolkit's shared code. Importing it changes nothing in the process.

Thread policy, per runtime, set where that runtime is used (each measured on this project's 2-core AMX CPU):

* PyTorch inference keeps libgomp's default (idle OpenMP threads spin briefly before sleeping). A process-wide
  ``OMP_WAIT_POLICY=PASSIVE`` made ``detect.py`` with a ``.pt`` 77 ms per image instead of 49 ms.
* ONNX Runtime and OpenVINO run their own thread pools; while only exported models run, torch's pre- and
  post-processing uses one thread (``InferenceModel.runtime_threads``) so no torch worker spins on their cores.
* ``train.py`` (its ``main``, before torch loads) asks for ``OMP_WAIT_POLICY=PASSIVE``: dataloader worker processes
  share the cores with the training step, and spinning OpenMP threads starve them.

An explicit ``OMP_WAIT_POLICY`` in the environment always wins.
"""
