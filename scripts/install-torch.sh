#!/usr/bin/env bash
# Install PyTorch into the active environment, choosing the build for this machine.
#
#   scripts/install-torch.sh PYTHON [VERSION]
#
# - torch already importable: nothing to do (a GPU user's own build is kept).
# - an NVIDIA GPU (nvidia-smi answers): the default PyPI build, which carries CUDA.
# - no GPU: a CPU-only build, never the multi-gigabyte CUDA one. First from local wheel houses that
#   pip is configured with (find-links), then from the PyTorch CPU index.
# Afterwards `pip install -e .` sees an installed torch that satisfies `torch>=2.4` and keeps it.
set -euo pipefail
py=${1:?usage: install-torch.sh PYTHON [VERSION]}
version=${2:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if "$py" -c "import torch" 2>/dev/null; then
  echo "torch $("$py" -c 'import torch; print(torch.__version__)') already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: installing the CUDA build of torch==$version"
  "$py" -m pip install "torch==$version"
  exit 0
fi
echo "no GPU: installing a CPU-only build of torch==$version"
# --no-index --no-deps: only a local wheel (find-links) can match, so nothing large is downloaded.
if "$py" -m pip install --no-index --no-deps "torch==$version" 2>/dev/null; then
  "$py" -m pip install "torch==$version"          # its small dependencies, torch itself stays
elif [ "$(uname -s)" = "Linux" ]; then
  "$py" -m pip install "torch==$version" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
else
  "$py" -m pip install "torch==$version"          # macOS and Windows wheels on PyPI are CPU builds
fi
"$py" -c "import torch; assert not torch.version.cuda, 'a CUDA build was installed'; print('torch', torch.__version__)"
