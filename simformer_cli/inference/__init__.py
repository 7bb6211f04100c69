"""Running a trained model on images: test-time resizing, multi-scale + flip, sharded writing."""
