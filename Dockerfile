# The mkt worker image: the mkt package and its dependencies in a virtual environment,
# run by Prefect's Docker worker (work pools mkt-docker-cpu and mkt-docker-gpu).
#
# docker/build-image.sh builds it with no registry access: it builds BASE_IMAGE locally,
# fills build/wheelhouse on the host and then runs `docker build`. The equivalent by hand:
#   docker build --build-arg BASE_IMAGE=mkt-base:bookworm --build-arg VARIANT=cpu \
#       -t mkt-worker:cpu .
#
# BASE_IMAGE must provide python3 with the venv module, in the Python version the
# wheelhouse was filled for (3.11 on Debian bookworm).
ARG BASE_IMAGE=mkt-base:bookworm

FROM ${BASE_IMAGE} AS deps
ARG WHEELHOUSE=build/wheelhouse

# Every package comes from the wheelhouse (--no-index), because the image has no CA
# bundle for the host's package mirror.
COPY ${WHEELHOUSE}/deps /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels --requirement /tmp/wheels/requirements.txt \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/wheels

# mkt itself is installed into a venv at the same path on the small base image, and only
# its files are staged under /staging: the package, its metadata and the `mkt` script.
FROM ${BASE_IMAGE} AS mkt
ARG WHEELHOUSE=build/wheelhouse
COPY ${WHEELHOUSE}/mkt /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --no-deps /tmp/wheels/*.whl \
    && site_packages="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && mkdir -p "/staging${site_packages}" /staging/opt/venv/bin \
    && mv "${site_packages}/mkt" "${site_packages}"/mkt-*.dist-info "/staging${site_packages}/" \
    && mv /opt/venv/bin/mkt /staging/opt/venv/bin/

# The final stage takes the two environments and none of the wheels. With the vfs
# storage driver every layer, and every container the legacy builder starts even for
# ARG or LABEL, is a full copy of the file system. So the cheap instructions come before
# the 2 GB environment, and only the label and mkt's small layer come after it: a
# change to mkt alone rebuilds those two.
FROM ${BASE_IMAGE}

# /opt/mkt/mkt points at the installed package, so deployments whose entrypoint is a
# file path (mkt/flows/crawl.py:crawl_store, as in prefect.yaml) run from /opt/mkt.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/sh mkt \
    && mkdir -p /var/lib/mkt /opt/mkt \
    && chown mkt:mkt /var/lib/mkt \
    && python_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && ln -s "/opt/venv/lib/python${python_version}/site-packages/mkt" /opt/mkt/mkt
# HF_HUB_OFFLINE: the embedding model ships as a package, and no model hub is reachable.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    MKT_HOME=/var/lib/mkt \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/mkt
VOLUME ["/var/lib/mkt"]
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import mkt, prefect"]

# No ENTRYPOINT: Prefect's Docker worker sets the container command itself
# (`prefect flow-run execute`). Run by hand, the image only prints versions.
CMD ["prefect", "version"]

# COPY leaves the files owned by root, so the mkt user cannot change the code it runs.
USER mkt

# VARIANT=gpu builds the same environment with another label. A real GPU build fills
# the wheelhouse with a CUDA build of torch 2.13.0 (from the PyTorch CUDA wheel index,
# with its nvidia-* runtime wheels) and faiss-gpu-cu12 in place of faiss-cpu. The NVIDIA
# driver comes from the host through the NVIDIA container runtime. The arguments come
# after the last RUN, because every RUN after an ARG is rebuilt when its value changes.
ARG VARIANT=cpu
ARG SOURCE_HASH=unknown
COPY --from=deps /opt/venv /opt/venv
LABEL org.opencontainers.image.title="mkt-worker" \
    org.opencontainers.image.description="mkt flows for Prefect's Docker worker" \
    org.opencontainers.image.licenses="Apache-2.0" \
    org.mkt.variant="${VARIANT}" \
    org.mkt.source-hash="${SOURCE_HASH}"
COPY --from=mkt /staging/ /
