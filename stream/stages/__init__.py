"""The pipeline's stage processes: capture -> preprocess -> infer -> publish, on one base.

`base` (the Stage class, `stage_main`, the command link), one module per stage.
"""
