# qasynth's warm R worker. One R process starts once, loads what every snippet
# shares, then forks a throw-away child per snippet: globals, options, attached
# packages, RNG state and open devices never reach the next snippet, and a
# snippet starts in a few milliseconds instead of the ~0.3 s of a fresh Rscript.
#
# Protocol (see evaluator/_pool.py):
#   stdin   one request a line, tab-separated:
#           id, wall_s, cpu_s, output_bytes, keep_bytes, total_mem_bytes, file_bytes, hex(code)
#   stdout  one JSON object a line: first a hello, then one reply per request
#   stderr  the worker's own trouble, for whoever started it
# A child rewires its fds 1 and 2 to the "console" file (argument 3) and fd 0 to
# /dev/null before it runs a snippet: printed output, messages and the output of
# system() all land in the console, as in a terminal, and the snippet cannot reach
# the request and reply pipes through them.
#
# Usage: R --vanilla --no-echo -f worker.R --args <mode 0|1|2> <packages,comma,separated> <console>
#
# Mode 1, inside the bubblewrap sandbox: this process is alone in its PID namespace
# with the sandbox's reaper (pid 1), so every other process was started by a snippet.
# Mode 2, no namespaces but a uid of its own: every other process of this uid was
# started by a snippet. Either way, after each snippet they are all killed, and while a
# snippet runs their resident memory is added up against the request's total. Mode 0
# (no namespace, a shared uid) can do neither.
local({
  args <- commandArgs(trailingOnly = TRUE)
  sandboxed <- identical(args[1L], "1")
  own_uid <- identical(args[1L], "2")
  packages <- if (length(args) >= 2L && nzchar(args[2L])) strsplit(args[2L], ",", fixed = TRUE)[[1L]] else character()
  console <- if (length(args) >= 3L) args[3L] else stop("worker.R needs the console path")
  options(warn = -1L)

  # ---- JSON out, without jsonlite (only r-base-core is needed) ------------------------
  utf8 <- function(x) {
    x <- as.character(x)
    x <- iconv(enc2utf8(x), "UTF-8", "UTF-8", sub = "?")
    x[is.na(x)] <- ""
    x
  }
  json_str <- function(s) {
    s <- utf8(s)
    s <- gsub("\\", "\\\\", s, fixed = TRUE)
    s <- gsub("\"", "\\\"", s, fixed = TRUE)
    s <- gsub("\n", "\\n", s, fixed = TRUE)
    s <- gsub("\r", "\\r", s, fixed = TRUE)
    s <- gsub("\t", "\\t", s, fixed = TRUE)
    ctl <- grepl("[\001-\037]", s, useBytes = TRUE)
    if (any(ctl)) s[ctl] <- vapply(s[ctl], json_ctl, "", USE.NAMES = FALSE)
    paste0("\"", s, "\"")
  }
  # The control characters JSON wants escaped and the gsub()s above left alone.
  json_ctl <- function(s) {
    parts <- vapply(utf8ToInt(s), function(cp) {
      if (cp < 32L) sprintf("\\u%04x", cp) else intToUtf8(cp)
    }, character(1))
    paste(parts, collapse = "")
  }
  json_num <- function(x) {
    if (is.integer(x)) return(as.character(x))
    if (x == trunc(x) && abs(x) < 1e15) return(sprintf("%.0f", x + 0)) # + 0: no "-0"
    format(x, digits = 15, scientific = FALSE, trim = TRUE)
  }
  to_json <- function(x) {
    if (is.null(x)) return("null")
    if (is.list(x)) {
      vals <- vapply(x, to_json, character(1), USE.NAMES = FALSE)
      if (!is.null(names(x))) return(paste0("{", paste0(json_str(names(x)), ":", vals, collapse = ","), "}"))
      return(paste0("[", paste(vals, collapse = ","), "]"))
    }
    if (length(x) != 1L) return(to_json(as.list(x)))
    if (is.na(x)) return("null")
    if (is.logical(x)) return(if (x) "true" else "false")
    if (is.numeric(x)) return(json_num(x))
    json_str(x)
  }

  own_fds <- function() suppressWarnings(as.integer(list.files("/proc/self/fd")))
  send <- function(x) {
    cat(to_json(x), "\n", sep = "", file = stdout())
    flush(stdout())
  }

  # ---- start: preload (not attach) so library(x) in a snippet is cheap, while the
  # search path stays what a fresh Rscript has -------------------------------------------
  failed <- tryCatch({
    for (p in packages) suppressPackageStartupMessages(loadNamespace(p))
    loadNamespace("parallel")
    loadNamespace("tools")
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(failed)) {
    send(list(ready = FALSE, error = failed))
    quit(save = "no", status = 3L)
  }
  # Plots go nowhere: the device is opened once and every child draws on its own copy.
  options(device = function(...) grDevices::pdf(NULL))
  grDevices::pdf(NULL)

  input <- file("stdin", open = "r", blocking = TRUE)
  # Descriptors a child must not keep besides 0-2 (which it rewires): whatever else R
  # holds open. A child that could write to a pipe of ours could forge a reply by accident.
  private_fds <- local({
    fds <- setdiff(own_fds(), c(0L, 1L, 2L))
    targets <- Sys.readlink(file.path("/proc/self/fd", fds))
    # Not the descriptor that listed the directory: it is closed (or /proc) by now.
    fds[nzchar(targets) & !startsWith(targets, "/proc/")]
  })
  self_pid <- Sys.getpid()
  tmp_root <- normalizePath(tempdir(), mustWork = TRUE)
  state_dir <- dirname(console)
  work_dir <- if (sandboxed) "/tmp/work" else file.path(tmp_root, "work")
  progress_path <- file.path(state_dir, "progress")
  page_bytes <- 4096
  clk_tck <- 100

  # ---- the sandbox's processes, from /proc -----------------------------------------------
  proc_stat <- function(pid) {
    line <- tryCatch(readLines(sprintf("/proc/%d/stat", pid), warn = FALSE), error = function(e) character())
    if (!length(line)) return(NULL)
    rest <- strsplit(sub("^.*\\) ", "", line[1L]), " ", fixed = TRUE)[[1L]]
    # fields after the command: state(1) ppid(2) ... utime(12) stime(13) ... rss(22)
    list(
      state = rest[1L],
      cpu_s = (as.numeric(rest[12L]) + as.numeric(rest[13L])) / clk_tck,
      rss_bytes = as.numeric(rest[22L]) * page_bytes
    )
  }
  my_uid <- file.info("/proc/self", extra_cols = TRUE)$uid
  others <- function() {
    entries <- list.files("/proc", pattern = "^[0-9]+$")
    pids <- suppressWarnings(as.integer(entries))
    keep <- !is.na(pids) & pids != 1L & pids != self_pid
    if (!sandboxed) {
      if (!own_uid) return(integer())
      uids <- file.info(file.path("/proc", entries), extra_cols = TRUE)$uid
      keep <- keep & !is.na(uids) & uids == my_uid
    }
    pids[keep]
  }
  # Resident memory of every process a snippet started. A forked child shares the
  # worker's pages until it writes them, and RSS counts them again: subtract the
  # worker's own resident size once per process so an idle fork counts about zero.
  baseline_rss <- 0
  snippet_rss <- function() {
    total <- 0
    for (p in others()) {
      s <- proc_stat(p)
      if (!is.null(s)) total <- total + max(0, s$rss_bytes - baseline_rss)
    }
    total
  }
  # Kill every process but the reaper and this worker, until none is left. `child`, the
  # snippet's own process, is already dead or dying by now and is not waited for.
  sweep <- function(child) {
    killed <- integer()
    for (round in 1:100) {
      pids <- setdiff(others(), child)
      live <- pids[vapply(pids, function(p) {
        s <- proc_stat(p)
        !is.null(s) && !(s$state %in% c("Z", "X"))
      }, logical(1))]
      if (!length(live)) break
      tools::pskill(live, tools::SIGKILL)
      killed <- union(killed, live)
      Sys.sleep(0.0005)
    }
    length(killed)
  }
  # Files a snippet wrote anywhere it could: its work dir, R's tempdir, /tmp, /dev/shm.
  written <- function() {
    roots <- c(work_dir, tmp_root, if (sandboxed) c("/tmp", "/dev/shm"))
    files <- unique(unlist(lapply(roots, function(r) {
      list.files(r, recursive = TRUE, full.names = TRUE, all.files = TRUE)
    })))
    files <- files[!startsWith(files, state_dir)]
    sizes <- file.size(files)
    sizes[is.na(sizes)] <- 0
    if (!length(sizes)) return(list(path = NULL, size = 0))
    i <- which.max(sizes)
    list(path = files[i], size = sizes[i])
  }
  wipe <- function() {
    for (d in list.files(tmp_root, all.files = TRUE, no.. = TRUE, full.names = TRUE)) {
      unlink(d, recursive = TRUE, force = TRUE)
    }
    unlink(work_dir, recursive = TRUE, force = TRUE)
    if (sandboxed) {
      for (root in c("/tmp", "/dev/shm")) {
        entries <- list.files(root, all.files = TRUE, no.. = TRUE, full.names = TRUE)
        keep <- normalizePath(entries, mustWork = FALSE) %in% c(tmp_root, state_dir)
        unlink(entries[!keep], recursive = TRUE, force = TRUE)
      }
    }
    extra <- setdiff(list.files(state_dir, all.files = TRUE, no.. = TRUE), c("console", "progress", "worker.R"))
    unlink(file.path(state_dir, extra), recursive = TRUE, force = TRUE)
    # A fresh, empty console (the old one may sit at the file-size limit, or a snippet may
    # have replaced it with something else): nothing of the snippet's is alive by now.
    Sys.chmod(state_dir, "0755")
    unlink(c(console, progress_path), recursive = TRUE, force = TRUE)
    close(file(console, open = "w"))
  }
  read_head <- function(path, n) {
    size <- file.size(path)
    if (is.na(size) || size == 0) return(list(text = "", size = 0))
    con <- file(path, open = "rb")
    on.exit(close(con))
    raw <- readBin(con, "raw", n = min(n, size))
    list(text = utf8(rawToChar(raw[raw != as.raw(0)])), size = size)
  }
  # The line of the last top-level expression the child started (it appends one per expression).
  read_progress <- function() {
    lines <- tryCatch(readLines(progress_path, warn = FALSE), error = function(e) character())
    v <- suppressWarnings(as.integer(lines[length(lines)]))
    if (length(v) && !is.na(v)) v else NA_integer_
  }

  # ---- the child: run one snippet and send back a list ------------------------------------
  # quit() and q() end the snippet, not the worker's bookkeeping: status 0 is a normal end.
  quit_hook <- function(save = "default", status = 0, runLast = TRUE) {
    cond <- structure(class = c("qasynth_quit", "condition"), list(message = "quit", call = NULL, status = status))
    stop(cond)
  }
  for (name in c("q", "quit")) {
    unlockBinding(name, baseenv())
    assign(name, quit_hook, envir = baseenv())
    lockBinding(name, baseenv())
  }
  eval_call <- quote(eval(exprs[[i]], envir = globalenv()))
  one_line <- function(call) {
    if (is.null(call)) return(NULL)
    text <- paste(trimws(deparse(call, width.cutoff = 200L, nlines = 3L)), collapse = " ")
    if (nchar(text) > 300L) text <- paste0(substr(text, 1L, 297L), "...")
    text
  }
  time_limits <- list(cpu = 0, wall = 0)
  run_snippet <- function(code) {
    warnings <- character()
    failing_call <- NULL
    deep_line <- NA_integer_
    current <- 0L
    exprs <- tryCatch(parse(text = code, keep.source = TRUE, encoding = "UTF-8"), error = function(e) e)
    if (inherits(exprs, "error")) {
      msg <- conditionMessage(exprs)
      m <- regmatches(msg, regexec("^(<text>:)?([0-9]+):([0-9]+): ", msg))[[1L]]
      return(list(
        verdict = "parse_error",
        message = sub("^(<text>:)?([0-9]+):([0-9]+): ", "line \\2:\\3: ", msg),
        line = if (length(m)) as.integer(m[3L]) else NULL
      ))
    }
    srcfile <- attr(exprs, "srcfile")
    srcrefs <- attr(exprs, "srcref")
    snippet_line <- function() {
      # The innermost call made from the snippet's own text: a line inside a function it
      # defined beats the top-level line that called the function.
      for (cl in rev(sys.calls())) {
        sr <- attr(cl, "srcref")
        if (!is.null(sr) && identical(attr(sr, "srcfile"), srcfile)) return(as.integer(sr[1L]))
      }
      NA_integer_
    }
    quit_status <- NULL
    progress <- tryCatch(file(progress_path, open = "w"), error = function(e) NULL)
    outcome <- tryCatch(
      withCallingHandlers(
        {
          for (i in seq_along(exprs)) {
            current <- i
            # Bookkeeping must not become the snippet's error (a full /tmp, closeAllConnections()):
            # the inner tryCatch catches before the calling handlers below ever see it.
            tryCatch({
              cat(if (length(srcrefs) >= i) srcrefs[[i]][1L] else i, "\n", sep = "", file = progress)
              flush(progress)
            }, error = function(e) NULL)
            r <- withVisible(eval(exprs[[i]], envir = globalenv()))
            if (r$visible) {
              if (isS4(r$value)) methods::show(r$value) else print(r$value)
            }
            flush(stdout())
          }
          NULL
        },
        warning = function(w) {
          # As a script would: warn >= 2 turns the warning into an error (R's default handler
          # does that, so let it run), warn < 0 drops it.
          level <- getOption("warn", 0)
          if (is.numeric(level) && level >= 2) return()
          if (is.numeric(level) && level < 0) invokeRestart("muffleWarning")
          call <- conditionCall(w)
          if (identical(call, eval_call)) call <- NULL
          text <- conditionMessage(w)
          if (!is.null(call)) text <- paste0("In ", one_line(call), ": ", text)
          if (length(warnings) < 50L) warnings <<- c(warnings, text)
          invokeRestart("muffleWarning")
        },
        error = function(e) {
          call <- conditionCall(e)
          if (!is.null(call) && !identical(call, eval_call)) failing_call <<- one_line(call)
          deep_line <<- snippet_line()
        }
      ),
      qasynth_quit = function(cond) {
        quit_status <<- cond$status
        NULL
      },
      error = function(e) e
    )
    setTimeLimit()
    line <- if (!is.na(deep_line)) deep_line else if (current > 0L && length(srcrefs) >= current) srcrefs[[current]][1L] else NULL
    if (!is.null(quit_status) && !identical(as.integer(quit_status), 0L)) {
      return(list(
        verdict = "runtime_error", message = sprintf("the script called quit(status = %d)", as.integer(quit_status)),
        failing_call = "quit", line = line, warnings = warnings
      ))
    }
    if (inherits(outcome, "error")) {
      msg <- conditionMessage(outcome)
      if (is.null(failing_call) && current > 0L) failing_call <- one_line(exprs[[current]])
      verdict <- if (grepl("reached (CPU|elapsed) time limit", msg)) {
        "timeout"
      } else if (grepl("cannot allocate (vector|memory)|could not allocate memory|vector memory exhausted|memory exhausted", msg)) {
        "memory_limit"
      } else {
        "runtime_error"
      }
      if (verdict == "timeout") {
        msg <- if (grepl("CPU", msg)) {
          sprintf("used more than %g s of CPU time (%s)", time_limits$cpu, msg)
        } else {
          sprintf("still running after %g s (%s)", time_limits$wall, msg)
        }
      }
      return(list(verdict = verdict, message = msg, failing_call = failing_call, line = line, warnings = warnings))
    }
    list(verdict = "passed", warnings = warnings)
  }

  child_main <- function(req) {
    # fds 1 and 2 become the console and stdin reads as empty, like a script run. A
    # closed descriptor is the lowest free one, so each file() lands on the number just closed.
    parallel:::closeFD(private_fds)
    parallel:::closeFD(1L)
    fd1 <- file(console, open = "a")
    parallel:::closeFD(2L)
    fd2 <- file(console, open = "a")
    parallel:::closeFD(0L)
    fd0 <- file("/dev/null", open = "r")
    rewired <- Sys.readlink(sprintf("/proc/self/fd/%d", 0:2))
    if (!all(endsWith(rewired, c("/dev/null", basename(console), basename(console))))) parallel:::mcexit(1L)
    dir.create(work_dir, recursive = TRUE, showWarnings = FALSE)
    setwd(work_dir)
    sink(stdout(), type = "message")
    options(warn = 0L)
    time_limits <<- list(cpu = req$cpu_s, wall = req$wall_s)
    if (req$cpu_s > 0) setTimeLimit(cpu = req$cpu_s, elapsed = req$wall_s)
    res <- tryCatch(run_snippet(req$code), error = function(e) {
      list(verdict = "runtime_error", message = conditionMessage(e))
    })
    setTimeLimit()
    try(flush(stdout()), silent = TRUE)
    parallel:::sendMaster(serialize(res, NULL, xdr = FALSE))
    parallel:::mcexit(0L)
  }

  # ---- the parent: fork, watch wall clock, CPU, memory and output, clean up -----------------
  dirty <- FALSE # set while a snippet's files may be around: the next one starts clean anyway
  handle <- function(req) {
    if (dirty) wipe()
    dirty <<- TRUE
    started <- proc.time()[["elapsed"]]
    job <- parallel:::mcfork()
    if (inherits(job, "masterProcess")) child_main(req)
    pid <- job$pid
    data <- NULL
    stopped <- NULL
    last_cpu <- 0
    peak_mem <- 0
    repeat {
      ready <- parallel:::selectChildren(job, timeout = 0.02)
      if (is.integer(ready) && pid %in% ready) {
        # One message is the whole result; EOF (an integer) means the child died without one.
        chunk <- parallel:::readChild(pid)
        if (is.raw(chunk)) data <- chunk
        break
      }
      if (is.null(ready)) break
      elapsed <- proc.time()[["elapsed"]] - started
      st <- proc_stat(pid)
      if (!is.null(st)) last_cpu <- st$cpu_s
      mem <- snippet_rss()
      peak_mem <- max(peak_mem, mem)
      out_size <- file.size(console)
      if (!is.na(out_size) && out_size > req$output_bytes) {
        stopped <- "output_limit"
      } else if (mem > req$total_mem_bytes) {
        stopped <- "memory_limit"
      } else if (elapsed > req$wall_s + 0.25) {
        stopped <- "timeout"
      } else if (req$cpu_s > 0 && last_cpu > req$cpu_s + 0.25) {
        stopped <- "cpu"
      }
      if (!is.null(stopped)) {
        tools::pskill(pid, tools::SIGKILL)
        sweep(-1L)
        parallel:::readChild(pid)
        break
      }
    }
    duration <- proc.time()[["elapsed"]] - started
    # With its result sent the child has nothing left to do (it would only wait for
    # parallel's exit handshake): end it now. The sweep then kills whatever else is alive;
    # the child itself does not count as left behind.
    if (!is.null(data)) {
      tools::pskill(pid, tools::SIGKILL)
      # Its pipe reads EOF once the kernel has torn its memory down (before its files):
      # until then every page this process writes is a shared page, copied on write.
      ready <- parallel:::selectChildren(pid, timeout = 0.1)
      if (is.integer(ready) && pid %in% ready) parallel:::readChild(pid)
    }
    progress <- read_progress()
    leftover <- sweep(pid)
    parallel:::rmChild(pid)
    out <- read_head(console, req$keep_bytes)
    res <- if (!is.null(data)) tryCatch(unserialize(data), error = function(e) NULL) else NULL
    if (is.null(res)) {
      big <- written()
      res <- if (identical(stopped, "output_limit") || out$size > req$output_bytes) {
        list(verdict = "output_limit", message = sprintf("printed more than %.0f bytes", req$output_bytes))
      } else if (identical(stopped, "memory_limit")) {
        list(verdict = "memory_limit", message = sprintf(
          "its processes held more than %.0f MB of memory together", req$total_mem_bytes / 2^20))
      } else if (identical(stopped, "timeout")) {
        list(verdict = "timeout", message = sprintf("still running after %g s (wall clock)", req$wall_s))
      } else if (identical(stopped, "cpu") || (req$cpu_s > 0 && last_cpu >= req$cpu_s - 0.1)) {
        list(verdict = "timeout", message = sprintf("used more than %g s of CPU time", req$cpu_s))
      } else if (big$size >= req$file_bytes) {
        list(verdict = "output_limit", message = sprintf(
          "wrote a file of %.0f bytes (%s), the most a file may hold", big$size, basename(big$path)))
      } else {
        tail <- if (grepl("caught segfault|caught illegal|caught bus error", out$text)) "; R reported a crash" else ""
        list(verdict = "killed", message = paste0("the R process died before the script finished", tail))
      }
      if (!is.na(progress) && is.null(res$line)) res$line <- progress
    }
    if (leftover > 0L && identical(res$verdict, "passed")) {
      res$verdict <- "killed"
      res$message <- sprintf("left %d background process(es) running after it finished; they were killed", leftover)
    }
    wipe()
    dirty <<- FALSE
    # Without a PID namespace the processes killed above are reaped by the host's init, on
    # its own time; until then they count against this uid's process limit. A fresh worker
    # (on a fresh uid) is the clean way on.
    retire <- own_uid && (leftover > 0L || !is.null(stopped))
    list(
      id = req$id,
      verdict = res$verdict,
      message = if (is.null(res$message)) NULL else utf8(res$message),
      failing_call = if (is.null(res$failing_call)) NULL else utf8(res$failing_call),
      line = if (is.null(res$line) || is.na(res$line)) NULL else as.integer(res$line),
      warnings = as.list(utf8(as.character(res$warnings))),
      stdout = out$text,
      stdout_bytes = out$size,
      duration_ms = round(duration * 1000, 3),
      cpu_ms = round(last_cpu * 1000),
      peak_mem_bytes = peak_mem,
      leftover_processes = leftover,
      retire = retire
    )
  }

  parse_request <- function(line) {
    f <- strsplit(line, "\t", fixed = TRUE)[[1L]]
    hex <- if (length(f) >= 8L) f[8L] else ""
    n <- nchar(hex)
    code <- if (n) rawToChar(as.raw(strtoi(substring(hex, seq.int(1L, n, 2L), seq.int(2L, n, 2L)), 16L))) else ""
    Encoding(code) <- "UTF-8"
    list(
      id = f[1L], wall_s = as.numeric(f[2L]), cpu_s = as.numeric(f[3L]), output_bytes = as.numeric(f[4L]),
      keep_bytes = as.numeric(f[5L]), total_mem_bytes = as.numeric(f[6L]), file_bytes = as.numeric(f[7L]),
      code = code
    )
  }

  # ---- warm-up: what every child would otherwise do for the first time, done once here --------
  # R byte-compiles a function the first time it is called and lazy-loads base functions on
  # first use; in a forked child both are lost with the child. Running the snippet machinery
  # once on an empty snippet, and printing a few values into a throw-away connection, leaves
  # them compiled and loaded in this process. Nothing reaches the global environment, the
  # search path, the options or the RNG: a snippet still starts as a fresh Rscript would.
  local({
    run_snippet("invisible(NULL)")
    run_snippet("(")
    utils::capture.output(print(1.5), print(c(a = 1L)), print("a"), print(TRUE), print(list(1)), cat("a\n"))
    serialize(list(verdict = "passed", warnings = character()), NULL, xdr = FALSE)
    to_json(list(id = "0", a = 1L, b = list("x"), c = NULL, d = TRUE, e = 1.5))
    invisible(NULL)
  })
  wipe()
  Sys.setenv(HOME = work_dir) # once here: every child inherits it, and a snippet's change dies with its child
  baseline_rss <- { s <- proc_stat(self_pid); if (is.null(s)) 0 else s$rss_bytes }
  send(list(
    ready = TRUE,
    protocol = 1L,
    r_version = paste(R.version$major, R.version$minor, sep = "."),
    packages = as.list(packages),
    pid = self_pid
  ))
  repeat {
    line <- readLines(input, n = 1L)
    if (!length(line)) break
    req <- tryCatch(parse_request(line), error = function(e) NULL)
    # A worker that failed its own bookkeeping asks to be replaced: a snippet may have
    # broken its state, and the next one deserves a clean sandbox.
    reply <- if (is.null(req)) {
      list(id = sub("\t.*", "", line), verdict = "killed", message = "the worker could not read the request",
           retire = TRUE)
    } else {
      tryCatch(handle(req), error = function(e) {
        list(id = req$id, verdict = "killed", message = paste("worker error:", conditionMessage(e)), retire = TRUE)
      })
    }
    send(reply)
    if (isTRUE(reply$retire)) break
  }
})
