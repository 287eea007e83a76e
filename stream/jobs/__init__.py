"""Batch jobs over many files: input expansion (`inputs`), the job state in SQLite (`state`),
per-video JSON Lines outputs renamed into place when complete (`writer`), and the `ovstream
batch` command (`cli`). The Python API is `stream.batch`."""
