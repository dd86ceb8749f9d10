"""Install fastbd's GPU-side packages from the offline bundle on a machine without network, one part at a time.

    python benchmarks/gpu_bundle.py deps|dali|ffcv --bundle ~/bundle --wheels .gpu-bundle/wheels

The bundle is the one ../shared/offline-gpu/make-bundle.sh makes (its parts moved into BUNDLE/parts/);
this does what its install.sh does, split so that each piece is timed, capped and skippable on its own
(benchmarks/gpu_check.py runs them in that order) and so that DALI, which matters most, does not wait
for the FFCV build:
  deps  the pure-Python wheels fastbd imports that the GPU image lacks (omegaconf; `--wheels`, made by
        benchmarks/gpu_prepare.sh) into BUNDLE/site-deps, only if they do not import already;
  dali  unpacks the bundle once (BUNDLE/stage) and installs DALI with what it imports into BUNDLE/site-dali;
  ffcv  unpacks the .debs (OpenCV core + imgproc, libjpeg-turbo, TBB) into BUNDLE/sysroot, builds FFCV's
        wheel from its sdist against them, installs it and its pure-Python needs into BUNDLE/site-ffcv.
Each installs into its own folder (pip --target replaces a top-level folder that is already there, and
DALI's wheels share `nvidia/` with the image's CUDA wheels), then imports the result in a fresh process.
The last line printed is JSON: {"ok": bool, "pythonpath": [...], "ld_library_path": [...], "detail": ...,
"skipped": true when the bundle's parts are not there (exit code 0 then, 1 for a failure)},
which the caller adds to the environment of the later steps; nothing is downloaded, ever.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DALI_WHEELS = ("nvidia_", "optree-", "makefun-", "astunparse-", "gast-", "nvtx-")  # DALI and what it imports
PIP = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
       "--upgrade", "--disable-pip-version-check"]
CHECKS = {"deps": "import omegaconf, yaml, typer, safetensors, matplotlib, psutil, torchvision; print('ok')",
          # DALI's wheels bring their own nvidia/ package folder (a pkgutil namespace, like the image's CUDA
          # wheels): check that torch still finds its CUDA libraries with it first on the path
          "dali": "import nvidia.dali as d, nvidia.dali.fn, nvidia.dali.plugin.pytorch, torch; "
                  "torch.cuda.is_available() and float((torch.ones(8, 8, device='cuda') @ torch.ones(8, 8, "
                  "device='cuda')).sum()); print(d.__version__)",
          "ffcv": "import ffcv, ffcv.libffcv; from ffcv.loader import Loader; print(ffcv.__version__)"}


class NoBundle(FileNotFoundError):
    """The bundle's parts are not there: the step is skipped, not failed."""


def run(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> str:
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... exited {r.returncode}: {(r.stderr or r.stdout)[-800:]}")
    return r.stdout


def imports(what: str, pythonpath: list[str], ld: list[str]) -> str:
    """Import `what`'s modules in a fresh interpreter with these paths first; raise with its error if it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*ld, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return run([sys.executable, "-c", CHECKS[what]], env=env).strip()


def stage(bundle: Path) -> Path:
    """The bundle's tar, unpacked once from its parts."""
    st = bundle / "stage"
    if (st / ".complete").is_file():
        return st
    parts = sorted((bundle / "parts").glob("part*"))
    if not parts:
        raise NoBundle(f"no bundle parts in {bundle / 'parts'} (move .gpu-bundle/pK/part* there first; "
                       "see benchmarks/GPU_CHECK.md)")
    shutil.rmtree(st, ignore_errors=True)
    st.mkdir(parents=True)
    cat = subprocess.Popen(["cat", *map(str, parts)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "x", "-C", str(st)], stdin=cat.stdout, capture_output=True, text=True)
    cat.wait()
    if tar.returncode or cat.returncode:
        raise RuntimeError(f"unpacking {len(parts)} parts failed (a part missing or cut short?): {tar.stderr[-400:]}")
    (st / ".complete").touch()
    return st


def install_deps(bundle: Path, wheels: Path) -> dict:
    try:
        return {"ok": True, "pythonpath": [], "ld_library_path": [], "detail": imports("deps", [], [])}
    except RuntimeError as missing:
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not found:
            raise RuntimeError(f"fastbd's imports fail and there are no wheels in {wheels} (run "
                               f"benchmarks/gpu_prepare.sh here and carry .gpu-bundle/wheels): {missing}") from None
        site = bundle / "site-deps"
        run([*PIP, "--target", str(site), *map(str, found)])
        return {"ok": True, "pythonpath": [str(site)], "ld_library_path": [],
                "detail": imports("deps", [str(site)], [])}


def install_dali(bundle: Path) -> dict:
    st, site = stage(bundle), bundle / "site-dali"
    whl = [w for w in sorted((st / "wheels").glob("*.whl")) if w.name.startswith(DALI_WHEELS)]
    if not any(w.name.startswith("nvidia_dali") for w in whl):
        raise FileNotFoundError(f"{st / 'wheels'}: no nvidia_dali wheel in the bundle")
    if not (site / ".complete").is_file():
        run([*PIP, "--target", str(site), *map(str, whl)])
        (site / ".complete").touch()
    return {"ok": True, "pythonpath": [str(site)], "ld_library_path": [], "detail": imports("dali", [str(site)], [])}


PKG_CONFIG_SHIM = """#!/bin/sh
# A stand-in for pkg-config (absent on this machine): FFCV's setup.py asks for exactly these two.
for a in "$@"; do case "$a" in
  opencv4|opencv) echo "-I{S}/usr/include/opencv4 -L{LIB} -lopencv_imgproc -lopencv_core"; exit 0;;
  libturbojpeg) echo "-I{S}/usr/include -L{LIB} -lturbojpeg"; exit 0;;
esac; done
echo "Package $* was not found"; exit 1
"""


def install_ffcv(bundle: Path) -> dict:
    """install.sh's FFCV half: the .debs into a sysroot, OpenCV declared to pkg-config, the wheel built."""
    st, site, sysroot = stage(bundle), bundle / "site-ffcv", bundle / "sysroot"
    lib = sysroot / "usr/lib/x86_64-linux-gnu"
    env = dict(os.environ)
    if not (site / ".complete").is_file():
        for deb in sorted((st / "debs").glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(sysroot)])
        (lib / "pkgconfig").mkdir(parents=True, exist_ok=True)
        # only core and imgproc are bundled: declare just those to opencv.hpp, as install.sh does
        (sysroot / "usr/include/opencv4/opencv2/opencv_modules.hpp").write_text(
            "#define HAVE_OPENCV_CORE\n#define HAVE_OPENCV_IMGPROC\n")
        (lib / "pkgconfig/opencv4.pc").write_text(
            "prefix=/usr\nlibdir=${prefix}/lib/x86_64-linux-gnu\nincludedir=${prefix}/include/opencv4\n"
            "Name: OpenCV\nDescription: OpenCV core and imgproc\nVersion: 4.6.0\n"
            "Libs: -L${libdir} -lopencv_imgproc -lopencv_core\nCflags: -I${includedir}\n")
        env.update(PKG_CONFIG_SYSROOT_DIR=str(sysroot), PKG_CONFIG_LIBDIR=f"{lib}/pkgconfig:{sysroot}/usr/share/pkgconfig")
        if shutil.which("pkg-config") is None:
            shim = bundle / "bin" / "pkg-config"
            shim.parent.mkdir(parents=True, exist_ok=True)
            shim.write_text(PKG_CONFIG_SHIM.replace("{S}", str(sysroot)).replace("{LIB}", str(lib)))
            shim.chmod(0o755)
            env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib), *filter(None, [env.get("LD_LIBRARY_PATH")])])
        built = bundle / "ffcv-wheel"
        if not list(built.glob("ffcv-*.whl")):
            sdist = sorted((st / "sdist").glob("ffcv-*.tar.gz"))
            if not sdist:
                raise FileNotFoundError(f"{st / 'sdist'}: no ffcv sdist in the bundle")
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-w", str(built), str(sdist[-1])], env=env)
        whl = [w for w in sorted((st / "wheels").glob("*.whl")) if not w.name.startswith(DALI_WHEELS)]
        run([*PIP, "--target", str(site), *map(str, whl), *map(str, built.glob("ffcv-*.whl"))], env=env)
        (site / ".complete").touch()
    return {"ok": True, "pythonpath": [str(site)], "ld_library_path": [str(lib)],
            "detail": imports("ffcv", [str(site)], [str(lib)])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["deps", "dali", "ffcv"])
    ap.add_argument("--bundle", default=str(Path.home() / "bundle"), help="folder whose parts/ holds the bundle")
    ap.add_argument("--wheels", default=".gpu-bundle/wheels", help="extra pure-Python wheels (deps)")
    args = ap.parse_args(argv)
    bundle = Path(args.bundle).expanduser()
    try:
        out = (install_deps(bundle, Path(args.wheels)) if args.what == "deps" else
               install_dali(bundle) if args.what == "dali" else install_ffcv(bundle))
    except (OSError, RuntimeError) as e:
        out = {"ok": False, "skipped": isinstance(e, NoBundle), "pythonpath": [], "ld_library_path": [],
               "detail": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] or out.get("skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
