"""Writes a small pure-Python wheel, so that this example's requirements.txt installs
something no miner has without reaching a package index.

    python3 make_wheel.py [FOLDER [NAME [VERSION [BODY]]]]

On a pool, requirements.txt names packages from PyPI (or your own index) instead.
"""
import base64
import hashlib
import os
import sys
import zipfile

here = os.path.dirname(os.path.abspath(__file__))
dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "wheels")
name = sys.argv[2] if len(sys.argv) > 2 else "hello_aic"
version = sys.argv[3] if len(sys.argv) > 3 else "1.0"
body = sys.argv[4] if len(sys.argv) > 4 else "def greeting():\n    return 'hello from an environment of your own'\n"
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": body,
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: aic-example\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}


def record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data.encode())}"


os.makedirs(dest, exist_ok=True)
wheel = os.path.join(dest, f"{name}-{version}-py3-none-any.whl")
with zipfile.ZipFile(wheel, "w") as z:
    for path, data in files.items():
        z.writestr(path, data)
    z.writestr(f"{dist}/RECORD", "\n".join([record(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]) + "\n")
print(f"wrote {os.path.relpath(wheel)}")
