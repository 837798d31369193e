"""The repository's own source files, as the checks of its code read them."""
from pathlib import Path


def source_files(folder: Path, suffixes=(".py", ".js")) -> list:
    """The folder's source files, less hidden folders (generated, never committed: bench/.bundle)."""
    return [path for path in sorted(folder.rglob("*")) if path.suffix in suffixes
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
