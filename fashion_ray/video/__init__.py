"""Video: probe and frame sampling by true presentation times (decoding), camera motion
(motion), appearance descriptors (appearance), and person tracks with actions on them
(tracking). Above models and formats; the pipeline and the run use it."""
