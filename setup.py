"""Build kdfast._C: C++ CPU kernels always, CUDA kernels when nvcc and a CUDA build of torch exist.

Environment knobs:
  KDFAST_FORCE_CPU=1        build the CPU-only extension even where nvcc is found.
  TORCH_CUDA_ARCH_LIST      CUDA architectures (default "9.0+PTX": H100/H200 code, PTX for newer GPUs).
  MAX_JOBS                  parallel compile jobs (ninja); default: the CPU cores this process may use.
  KDFAST_NO_CCACHE=1        do not compile through ccache even where it is installed.

`pip install -e .` builds in pip's isolated environment with the torch pinned in pyproject.toml;
`pip install --no-build-isolation -e .` builds against the installed torch (see the README's Install section).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # --no-build-isolation in an environment without torch
    sys.exit(
        "kdfast builds against torch, which this build cannot import.\n"
        "Install torch first (pip install -r requirements.txt), then build with:\n"
        "    pip install --no-build-isolation -e ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def default_build_jobs():
    """MAX_JOBS defaults to the cores this process may use (ninja's own default, cores + 2, oversubscribes a
    small machine and each nvcc job takes GiBs)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("MAX_JOBS", str(max(1, cores)))


def use_ccache(cuda_home):
    """Compiles through ccache when it is installed: a rebuild of unchanged translation units (a fresh build
    folder, pip's isolated build, another checkout) takes seconds instead of minutes. CXX goes to ccache's
    compiler wrapper folder (torch runs CXX as one program), nvcc through PYTORCH_NVCC."""
    ccache = shutil.which("ccache")
    if ccache is None or os.environ.get("KDFAST_NO_CCACHE", "0") == "1":
        return "no ccache"
    wrapper = next((d for d in ("/usr/lib/ccache", "/usr/local/lib/ccache", "/usr/lib64/ccache")
                    if os.path.exists(os.path.join(d, "c++"))), None)
    # Python's CFLAGS carry -g, with which ccache hashes the working directory: pip builds in a fresh temporary
    # folder every time, so without this no build would ever hit the cache.
    os.environ.setdefault("CCACHE_NOHASHDIR", "1")
    if wrapper and "CXX" not in os.environ:
        os.environ["CXX"] = os.path.join(wrapper, "c++")
    if cuda_home and "PYTORCH_NVCC" not in os.environ:
        os.environ["PYTORCH_NVCC"] = f"{ccache} {os.path.join(cuda_home, 'bin', 'nvcc')}"
    return f"ccache {ccache}"


def find_cuda_home():
    """CUDA_HOME, else the directory of nvcc on PATH, else the newest /usr/local/cuda*."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        # A toolkit root has nvcc, the runtime headers and the runtime library (a bare nvcc on PATH,
        # e.g. /usr/local/bin/nvcc, does not make /usr/local a toolkit).
        if home and all(
            os.path.exists(os.path.join(home, part))
            for part in ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart.so")
        ):
            return home
    return None


def cuda_library_headers():
    """Header folders of the CUDA libraries torch's wheels bring (cuSPARSE, cuBLAS, ...), which a minimal
    toolkit lacks. Passed with -isystem so the toolkit's own headers still win."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d))
    return found


def cuda_wanted(cuda_home):
    if os.environ.get("KDFAST_FORCE_CPU", "0") == "1":
        return False, "KDFAST_FORCE_CPU=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if cuda_home is None:
        return False, "no nvcc found (set CUDA_HOME)"
    return True, f"nvcc at {cuda_home}, torch CUDA {torch.version.cuda}"


def extensions():
    cuda_home = find_cuda_home()
    with_cuda, why = cuda_wanted(cuda_home)
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        # torch.utils.cpp_extension reads CUDA_HOME at import time; refresh it for this process.
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*", "cpu", "*.cpp")))
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    define_macros = []
    extra = {"cxx": cxx_flags}
    ext_class = cpp_extension.CppExtension
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "*", "cuda", "*.cu")))
        define_macros.append(("KDFAST_WITH_CUDA", None))
        # -fmad=false: the tally's bilinear interpolation must round exactly as the CPU kernel does, so
        # that CPU and CUDA produce identical integer counts.
        system_headers = [flag for d in cuda_library_headers() for flag in ("-isystem", d)]
        extra["cxx"] = cxx_flags + system_headers
        extra["nvcc"] = ["-O3", "-fmad=false", "--expt-relaxed-constexpr"] + system_headers
        ext_class = cpp_extension.CUDAExtension
    backends = "cpu + cuda" if with_cuda else "cpu"
    default_build_jobs()
    cache = use_ccache(cuda_home if with_cuda else None)
    print(f"[kdfast] building kdfast._C with backends: {backends} ({why}); MAX_JOBS={os.environ['MAX_JOBS']}, "
          f"{cache}", file=sys.stderr)
    return [
        ext_class(
            "kdfast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="kdfast",
    version="0.1.0",
    description="Fast knowledge-distillation and interpretability toolkit (network dissection, e2KD, B-cos)",
    packages=find_packages(include=["kdfast", "kdfast.*"]),
    package_data={"kdfast": ["data/*.csv"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "tqdm",
        "matplotlib",
        "scipy",
        "pyyaml",
        "captum",
        "transformers",
        "tokenizers",
    ],
    entry_points={
        "console_scripts": [
            "kdfast-dissect = kdfast.dissect.cli:run",
            "kdfast-study = kdfast.study.cli:main",
            "kdfast-info = kdfast.info:main",
            "kdfast-distill = kdfast.cli.distill:main",
            "kdfast-evaluate = kdfast.cli.evaluate:run",
            "kdfast-evaluate-e2kd = kdfast.cli.evaluate_e2kd:main",
            "kdfast-distill-nlp = kdfast.cli.distill_nlp:main",
            "kdfast-evaluate-nlp = kdfast.cli.evaluate_nlp:main",
            "kdfast-make-synthetic-broden = kdfast.cli.make_synthetic_broden:main",
            "kdfast-make-synthetic-shapes = kdfast.cli.make_synthetic_shapes:main",
            "kdfast-make-synthetic-sst = kdfast.cli.make_synthetic_sst:main",
        ]
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
