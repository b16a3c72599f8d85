"""The run: settings, the pipeline file, the threads that read, infer, order, track, count and emit; the summary."""
