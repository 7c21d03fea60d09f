"""The Secondary Capture overlay: build, canvas rendering, heatmap, text."""
