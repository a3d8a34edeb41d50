"""The Colab layer, at the edge of the package: Drive, secrets, the GPU check, the project, installs.

Nothing below this layer imports it (``tests/test_architecture.py`` checks): the stages take
folders from ``nbutils.core.paths.Paths`` and secrets from the environment, which ``connect``
fills. Outside Colab everything falls back to local equivalents: "Drive" is the local folder
``PROJECT_ROOT`` and secrets come from environment variables.

Notebook cells use the names re-exported here: ``colab.connect``, ``colab.current``, ... Settings that
tests change (``drive.DRIVE_MOUNT``, ``drive.LONG_CELL_SECONDS``) are read from their module.
"""

from nbutils.colab import drive, install, project, release, secrets
from nbutils.colab.doctor import run_doctor
from nbutils.colab.drive import (
    CONNECT_CELL,
    DEFAULT_PROJECT_ROOT,
    drive_mounted,
    flush_drive,
    in_colab,
    mount_drive,
    on_drive,
)
from nbutils.colab.gpu import gpu_report
from nbutils.colab.project import (
    INSTALL_CELL,
    PROJECT_CELL,
    Project,
    connect,
    create_project,
    current,
    describe_project,
    next_steps,
    show_errors_briefly,
)
from nbutils.colab.release import INSTALL_REF, REPO_REF, REPO_SLUG, colab_url, install_url
from nbutils.colab.secrets import SECRET_NAMES, lookup_secret, secret, use_secrets

__all__ = [
    "drive", "install", "project", "release", "secrets",  # the modules, for the settings tests change
    "CONNECT_CELL", "DEFAULT_PROJECT_ROOT", "INSTALL_CELL", "INSTALL_REF",
    "PROJECT_CELL", "Project", "REPO_REF", "REPO_SLUG", "SECRET_NAMES", "colab_url", "connect", "create_project",
    "current", "describe_project", "drive_mounted", "flush_drive", "gpu_report", "in_colab", "install_url",
    "lookup_secret", "mount_drive", "next_steps", "on_drive", "run_doctor", "secret", "show_errors_briefly",
    "use_secrets",
]
