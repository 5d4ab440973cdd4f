import os

# Plain pytest only: papermill kernels must keep the inline backend (setting Agg there
# would strip every image from executed notebooks).
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
