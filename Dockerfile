# syntax=docker/dockerfile:1
# Portcullis: the gateway and the scanner in one image.
#
#   docker build -t portcullis .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp \
#     -v "$PWD/gateway.yaml:/etc/portcullis/gateway.yaml:ro" \
#     -v portcullis-state:/var/lib/portcullis portcullis
#   docker run --rm -v "$PWD:/src" -w /src portcullis scan infra/ --checkov
#
# Debian bookworm, not Alpine: the embedded Rego engine's wheels (regorus)
# need glibc >= 2.34. The install commands are the ones tests/test_packaging.py
# (the wheel into a fresh venv) and the Makefile (checkov in its own venv) run.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN pip install --no-cache-dir 'build==1.2.2.post1'
COPY pyproject.toml README.md ./
COPY policies/ policies/
COPY portcullis/ portcullis/
COPY policy_engine/ policy_engine/
COPY gateway/ gateway/
COPY iac_scanner/ iac_scanner/
RUN python -m build --outdir /dist .

FROM ${PYTHON_IMAGE} AS portcullis
COPY --from=wheel /dist/ /dist/
# The policy set is in the wheel (portcullis/policies); link it to a fixed
# path for configs: policy: {source: /opt/portcullis/policies}.
RUN python -m venv /opt/portcullis \
    && /opt/portcullis/bin/pip install --no-cache-dir /dist/portcullis-*.whl \
    && ln -s "$(/opt/portcullis/bin/python -c 'import portcullis.paths as p; print(p.PACKAGED_POLICY_DIR)')" \
       /opt/portcullis/policies \
    && /opt/portcullis/bin/portcullis policy check /opt/portcullis/policies

# checkov vendors its own `hcl2` module, which clashes with python-hcl2's: its
# own venv, run by `portcullis scan --checkov` as a subprocess.
FROM ${PYTHON_IMAGE} AS checkov
ARG CHECKOV_VERSION=3.3.30
# `checkov` on PATH (the shim) runs this venv's checkov, so a bare
# `portcullis scan --checkov` finds it.
RUN python -m venv /opt/checkov \
    && /opt/checkov/bin/pip install --no-cache-dir "checkov==${CHECKOV_VERSION}" \
    && mkdir /opt/checkov/shim \
    && ln -s ../bin/checkov /opt/checkov/shim/checkov

# No compilers, no build tools, no pip cache: the two venvs and a user.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Zero-trust access gateway and Terraform scanner sharing one Rego policy set" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid portcullis --no-create-home \
       --home-dir /var/lib/portcullis --shell /usr/sbin/nologin portcullis \
    && install -d -o portcullis -g portcullis -m 0750 /var/lib/portcullis \
    && install -d -m 0755 /etc/portcullis
COPY --from=portcullis /opt/portcullis /opt/portcullis
COPY --from=checkov /opt/checkov /opt/checkov
ENV PATH=/opt/portcullis/bin:/opt/checkov/shim:$PATH \
    HOME=/var/lib/portcullis \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTCULLIS_HEALTH_URL=http://127.0.0.1:8080/healthz
# Everything the gateway writes (decision log, a generated assertion key)
# belongs here; the root filesystem can be mounted read-only (plus /tmp).
VOLUME ["/var/lib/portcullis"]
WORKDIR /var/lib/portcullis
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PORTCULLIS_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["portcullis"]
CMD ["gateway", "--config", "/etc/portcullis/gateway.yaml"]
