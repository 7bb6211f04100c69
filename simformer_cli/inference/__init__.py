"""Running a trained model on images: test-time views (scales, flip), sharded resumable writing of
label maps, and the pseudo-label rule."""
