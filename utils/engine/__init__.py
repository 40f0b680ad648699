"""The engine wing: the training loop (``trainer``), the inference loop (``inference``), the
classification stage (``classify``), checkpoints, torchrun, devices, seeds, run folders
(``rundir``) and the frame of a stage script's ``main`` (``stage``). Imports the base, the data
and the evaluation wings."""
