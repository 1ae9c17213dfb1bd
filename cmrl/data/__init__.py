"""Layer 2, offline datasets: the format (`format`), scripted-expert generation (`generation`) and
loading (`loading`). The names users need are re-exported here: `generate_dataset`,
`load_dataset`, `read_manifest`, `DatasetError`."""

from .format import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, DatasetError, TaskData,  # noqa: F401
                     WeakExpertError, dataset_id, held_out_tasks, read_manifest)
from .generation import generate_dataset  # noqa: F401
from .loading import load_dataset  # noqa: F401
