"""Training of the tiny-tabletop backbone (``models/tiny-tabletop-llava``): the synthetic world's
stand-in for a pretrained MLLM. ``part-point backbone STAGE`` runs each stage (docs/tiny_tabletop.md):

- ``scenes``: render the train / val / test scenes once into shards (``scenes.py``);
- ``vision``: the vision tower learns what is under each image token (``vision.py``), the stand-in
  for CLIP / SigLIP's web-scale pretraining;
- ``language``: the language model learns part questions and object-level pointing in text, with
  the vision tower frozen (``language.py``), the stand-in for instruction tuning;
- ``ship`` and ``evaluate``: the fp16 model and its model-card numbers (``report.py``).

ROS-free; needs torch, transformers and (for ``scenes``) open3d.
"""
