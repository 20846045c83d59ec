"""Build hook (the metadata is in setup.cfg): a wheel carries the repository's ``configs/`` and
``metrics/mlsv_verification/`` inside the package, as ``mlsv/configs`` and ``mlsv/metrics``, where
``mlsv.shipped_path`` finds them (a source checkout or editable install reads the repository's own)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"configs": "mlsv/configs", "metrics/mlsv_verification": "mlsv/metrics/mlsv_verification"}


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's folders
        for src, dst in SHIPPED.items():
            for file in sorted(Path(src).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    target = Path(self.build_lib, dst, file.relative_to(src))
                    self.mkpath(str(target.parent))
                    self.copy_file(str(file), str(target))


setup(cmdclass={"build_py": BuildWithShippedFiles})
