"""Build of plstm_graph and its optional native extension ``plstm_graph._C``.

    pip install --no-build-isolation -e .     # or without -e; torch must already be installed

Environment variables:
    FORCE_CUDA=1          build the CUDA kernels even where torch/nvcc detection says no
    FORCE_ONLY_CPU=1      never build the CUDA kernels
    TORCH_CUDA_ARCH_LIST  e.g. "8.0;9.0" (read by torch.utils.cpp_extension)
    NVCC_FLAGS            extra nvcc flags, space separated
    MAX_JOBS              parallel compile jobs (ninja)
    PLSTM_GRAPH_NO_EXT=1  pure-Python install (no native ops; the torch backend is used)

Without torch at build time or without a C++ compiler the package is installed as pure Python
and ``plstm_graph.WITH_NATIVE`` is False.
"""
import glob
import os
import shlex
import shutil
import sys
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _flag(name):
    return os.getenv(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _have_cxx():
    if sys.platform == "win32":
        return shutil.which("cl") is not None
    candidates = [os.getenv("CXX")] if os.getenv("CXX") else ["c++", "g++", "clang++"]
    return any(shutil.which(shlex.split(c)[0]) for c in candidates if c)


def _openmp_flags(torch):
    """OpenMP flags that match torch's intra-op backend (at::parallel_for is inlined into the
    extension, so without them our kernels would run on one thread)."""
    info = torch.__config__.parallel_info()
    if "parallel backend: OpenMP" not in info:
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang needs libomp; run single-threaded instead
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def _extensions():
    if _flag("PLSTM_GRAPH_NO_EXT"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError:
        warnings.warn("plstm_graph: torch is not importable at build time, installing without "
                      "the native extension (use pip install --no-build-isolation)")
        return [], {}
    if not _have_cxx():
        warnings.warn("plstm_graph: no C++ compiler found, installing without the native "
                      "extension (the pure-PyTorch backend is used)")
        return [], {}

    force_cuda = _flag("FORCE_CUDA")
    with_cuda = not _flag("FORCE_ONLY_CPU") and (
        force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None))
    if with_cuda and (torch.version.cuda is None or CUDA_HOME is None):
        raise RuntimeError(
            "plstm_graph: FORCE_CUDA=1 needs a CUDA build of torch (torch.version.cuda="
            f"{torch.version.cuda}) and the CUDA toolkit (CUDA_HOME={CUDA_HOME})")

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))  # module, shared checks
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "*.cpp")))  # one schema file per op
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    omp_compile, omp_link = _openmp_flags(torch)
    if sys.platform == "win32":
        cxx_flags = ["/O2"] + omp_compile
    else:  # (the C++ standard flag comes from torch.utils.cpp_extension)
        cxx_flags = ["-O3", "-g0"] + omp_compile
    define_macros = []
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]
        nvcc_flags += shlex.split(os.getenv("NVCC_FLAGS", ""))
        extra_compile_args["nvcc"] = nvcc_flags
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    ext = ext_cls(
        "plstm_graph._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=omp_link,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="plstm_graph",
    version=VERSION,
    description="pLSTM (parallelizable Linear Source Transition Mark networks) on DAGs for "
                "PyTorch Geometric",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "benchmarks.*",
                                    "examples", "examples.*")),
    package_data={"plstm_graph": ["datasets/data/*.md", "datasets/data/*.zip",
                                  "datasets/data/**/*"]},
    python_requires=">=3.9",
    # torch 2.4: torch.library.register_fake, torch.serialization.add_safe_globals,
    # torch.nn.functional.rms_norm
    install_requires=["torch>=2.4", "torch_geometric>=2.5", "networkx"],
    extras_require={"test": ["pytest", "hypothesis"], "examples": ["tqdm", "matplotlib"],
                    "plot": ["matplotlib"], "scatter": ["torch_scatter"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
