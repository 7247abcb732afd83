"""Build hook: the wheel carries the top-level conf/ as ``vitft/conf`` (metadata: pyproject.toml).

An editable install needs no copy: ``vitft.core.resolvers.conf_dir`` finds the clone's conf/.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConf(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            conf = Path(__file__).resolve().parent / "conf"
            shutil.copytree(conf, Path(self.build_lib) / "vitft" / "conf", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConf})
