"""Where Tune keeps a sweep, and finding the sweep to resume."""
from __future__ import annotations

from pathlib import Path

from workloads.core.errors import UserError
from workloads.core.storage import filesystem

STATE_FILE = "emosweep.json"  # beside Tune's own state in the experiment folder


class Storage:
    """Where Tune keeps a sweep: a local folder or an object-store URI (s3://, gs://, …), read
    and written through pyarrow's filesystems, as Tune itself does."""

    def __init__(self, root: str):
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = root.rstrip("/")
        self.fs, self.base = filesystem(self.root)
        self.local = "://" not in root

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _fs_path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._fs_path(name)).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(self._fs_path(name)) as f:
            return f.read().decode()

    def write_text(self, name: str, text: str) -> None:
        self.fs.create_dir(self._fs_path(name).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self._fs_path(name)) as f:
            f.write(text.encode())

    def sweeps(self, prefix: str) -> list[str]:
        """Names of the sweeps under root whose name starts with prefix, oldest first."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.base, allow_not_found=True))
        found = [(i.mtime_ns or 0, i.base_name) for i in infos
                 if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(prefix)
                 and self.exists(f"{i.base_name}/{STATE_FILE}")]
        return [name for _, name in sorted(found)]


def find_resume(storage: Storage, study, resume: str) -> str:
    """The name of the sweep to resume under storage (`resume` may be a local folder path)."""
    candidate = Path(resume).expanduser()
    if storage.local and candidate.is_dir() and (candidate / STATE_FILE).exists():
        if str(candidate.resolve().parent) != storage.root:
            raise UserError(f"{candidate} is not under the storage path {storage.root}; pass --storage-path")
        return candidate.name
    if resume != "latest":
        if not storage.exists(f"{resume}/{STATE_FILE}"):
            raise UserError(f"no sweep named {resume!r} under {storage.root}")
        return resume
    runs = storage.sweeps(f"{study.name}-")
    if not runs:
        raise UserError(f"nothing to resume: no sweep of {study.name} under {storage.root}")
    return runs[-1]


