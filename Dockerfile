# lit_mmrec on an official PyTorch CUDA runtime image (torch comes from the image; pip keeps it).
#   docker build -t lit_mmrec .
#   docker run --gpus all -e WANDB_API_KEY -v /path/to/data:/data -v /path/to/runs:/runs \
#       lit_mmrec fit --config configs/experiment/dasrec_tiktok.yaml --trainer configs/trainer/gpu.yaml
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LIT_MMREC_DATA=/data \
    LIT_MMREC_OUTPUT=/runs \
    LIT_MMREC_CACHE=/runs/cache

RUN useradd --create-home --uid 1000 recsys \
    && mkdir -p /data /runs /opt/lit_mmrec \
    && chown recsys:recsys /data /runs /opt/lit_mmrec

WORKDIR /opt/lit_mmrec
COPY --chown=recsys:recsys pyproject.toml README.md ./
COPY --chown=recsys:recsys lit_mmrec ./lit_mmrec
COPY --chown=recsys:recsys configs ./configs
COPY --chown=recsys:recsys sweeps ./sweeps
# the package only (not the test tools); torch>=2.1 is satisfied by the image's CUDA build
RUN pip install --no-cache-dir .

USER 1000:1000
VOLUME ["/data", "/runs"]
ENTRYPOINT ["lit_mmrec"]
CMD ["--help"]
