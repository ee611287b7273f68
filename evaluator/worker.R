# qasynth's warm R worker. One R process starts once, loads what every snippet
# shares, then forks a throw-away child per snippet: globals, options, attached
# packages, RNG state and open devices never reach the next snippet, and a
# snippet starts in a few milliseconds instead of the ~0.3 s of a fresh Rscript.
#
# Descriptors, set up by whoever starts it (evaluator/_pool.py):
#   0       /dev/null: a snippet reading stdin reads nothing, as in a script run
#   1, 2    the "console": one in-memory file, opened for appending, where printed output,
#           messages and the output of system() all land, as in a terminal. The pool reads
#           it after each reply and empties it; this process never writes to it.
#   <req>   requests: two little-endian 32-bit integers (a job number and the code's length
#           in bytes), then the code
#   <rep>   replies, one line each, tab-separated fields (backslash, tab and newline escaped):
#           first "ready", R's version and this process's pid (or "failed" and why), then
#           per request: job, verdict, line, duration_ms, cpu_ms, peak_mem_bytes,
#           leftover_processes, retire (0/1), message, failing_call, and the warnings
#   <prog>  the "progress" file: the child appends the line of each top-level expression it
#           starts; the pool empties it after each reply
# The request and reply pipes are closed in every child, so a snippet cannot reach them.
#
# Usage: R --vanilla --no-echo -f worker.R --args <mode 0|1|2> <packages,comma,separated>
#        <req> <rep> <prog> <wall_s> <cpu_s> <output_bytes> <total_mem_bytes> <file_bytes>
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
  fds <- suppressWarnings(as.integer(args[3:5]))
  limits <- suppressWarnings(as.numeric(args[6:10]))
  if (anyNA(fds) || anyNA(limits)) stop("worker.R needs its descriptors and limits")
  names(limits) <- c("wall_s", "cpu_s", "output_bytes", "total_mem_bytes", "file_bytes")
  limits <- as.list(limits)
  fd_path <- function(fd) sprintf("/proc/self/fd/%d", fd)
  console <- fd_path(1L)
  progress_path <- fd_path(fds[3L])
  options(warn = -1L)

  # ---- replies: one line of tab-separated fields ---------------------------------------------
  # Strings go out as R holds them, with only what would break the line escaped; the pool
  # decodes them as UTF-8.
  escape <- function(x) {
    x <- gsub("\\", "\\\\", enc2utf8(as.character(x)), fixed = TRUE, useBytes = TRUE)
    x <- gsub("\t", "\\t", x, fixed = TRUE, useBytes = TRUE)
    gsub("\n", "\\n", x, fixed = TRUE, useBytes = TRUE)
  }
  reply_line <- function(r) {
    or_empty <- function(x) if (is.null(x) || !length(x)) "" else paste(x, collapse = "\n")
    fields <- sprintf(
      "%s\t%s\t%d\t%.3f\t%.0f\t%.0f\t%d\t%d", r$id, r$verdict,
      if (is.null(r$line)) NA_integer_ else as.integer(r$line[1L]),
      as.numeric(c(r$duration_ms, 0)[1L]), as.numeric(c(r$cpu_ms, 0)[1L]),
      as.numeric(c(r$peak_mem_bytes, 0)[1L]), as.integer(c(r$leftover_processes, 0L)[1L]),
      as.integer(isTRUE(r$retire))
    )
    text <- escape(c(or_empty(r$message), or_empty(r$failing_call), as.character(r$warnings)))
    paste(c(fields, text), collapse = "\t")
  }

  # ---- the channels: R cannot adopt a descriptor it inherited, but it can open the same
  # pipe again through /proc/self/fd; the inherited numbers are then closed -----------------
  requests <- file(fd_path(fds[1L]), open = "rb", blocking = TRUE, raw = TRUE)
  replies <- file(fd_path(fds[2L]), open = "w", raw = TRUE)
  parallel:::closeFD(fds[1:2])
  send <- function(line) {
    cat(line, "\n", sep = "", file = replies)
    flush(replies)
  }

  # ---- start: preload (not attach) so library(x) in a snippet is cheap, while the
  # search path stays what a fresh Rscript has. Nothing else: every page this process
  # holds is copied into the page tables of every fork and freed again when it exits. ------
  failed <- tryCatch({
    for (p in packages) suppressPackageStartupMessages(loadNamespace(p))
    loadNamespace("parallel")
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(failed)) {
    send(paste0("failed\t", escape(failed)))
    quit(save = "no", status = 3L)
  }
  # Plots go nowhere: the device is opened once and every child draws on its own copy.
  options(device = function(...) grDevices::pdf(NULL))
  grDevices::pdf(NULL)

  # The child appends to the progress file through this connection; the parent reads it by path.
  progress <- file(progress_path, open = "a", raw = TRUE)
  # Descriptors a child must not keep: the request and reply pipes (reopened above, so their
  # numbers are not the inherited ones). A child that could write to a pipe of ours could
  # forge a reply by accident.
  private_fds <- local({
    fds <- setdiff(suppressWarnings(as.integer(list.files("/proc/self/fd"))), 0:2)
    fds[startsWith(Sys.readlink(fd_path(fds)), "pipe:")]
  })
  # parallel's own entry points, called directly: its R wrappers only check what is known to
  # be right here, and each call in a parent that has just forked costs page faults.
  mc_fork <- parallel:::C_mc_fork
  mc_select <- parallel:::C_mc_select_children
  mc_read <- parallel:::C_mc_read_child
  mc_rm <- parallel:::C_mc_rm_child
  mc_kill <- parallel:::C_mc_kill
  mc_cleanup <- parallel:::C_mc_cleanup
  mc_send <- parallel:::C_mc_send_master
  mc_exit <- parallel:::C_mc_exit
  # SIGKILL, through parallel (tools::pskill would load one more package into every fork);
  # a process that is gone already is no error.
  kill9 <- function(pids) {
    for (p in pids) tryCatch(.Call(mc_kill, as.integer(p), 9L), error = function(e) NULL)
  }
  self_pid <- Sys.getpid()
  tmp_root <- normalizePath(tempdir(), mustWork = TRUE)
  tmp_base <- dirname(tmp_root) # TMPDIR: the sandbox's /tmp, or the scratch dir
  state_dir <- file.path(tmp_base, ".qasynth")
  work_dir <- if (sandboxed) file.path(tmp_base, "work") else file.path(tmp_root, "work")
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
  # In the sandbox's PID namespace the last pid handed out tells at once whether the child
  # started anything at all: the usual case, and then there is nothing to look for.
  last_pid <- if (sandboxed) file("/proc/sys/kernel/ns_last_pid", open = "rb", raw = TRUE)
  sweep <- function(child) {
    if (sandboxed) {
      seek(last_pid, 0)
      if (identical(rawToChar(readBin(last_pid, "raw", 32L)), paste0(child, "\n"))) return(0L)
    }
    killed <- integer()
    for (round in 1:100) {
      pids <- setdiff(others(), child)
      live <- pids[vapply(pids, function(p) {
        s <- proc_stat(p)
        !is.null(s) && !(s$state %in% c("Z", "X"))
      }, logical(1))]
      if (!length(live)) break
      kill9(live)
      killed <- union(killed, live)
      Sys.sleep(0.0005)
    }
    length(killed)
  }

  # ---- what a snippet may leave behind: files where it can write, and the work dir -------
  # Those places, and what may stay in them: the dirs themselves and this script.
  roots <- unique(c(tmp_base, state_dir, tmp_root, work_dir, if (sandboxed) "/dev/shm"))
  kept_paths <- c(state_dir, tmp_root, work_dir, file.path(state_dir, "worker.R"))
  listing <- function() list.files(roots, all.files = TRUE, full.names = TRUE, no.. = TRUE)
  # Everything a snippet could change that the next one would notice: what the places hold,
  # whether they are still writable directories, and the worker's working directory
  # (NULL once the directory it names is gone, even if one of the same name took its place).
  state_of <- function() list(listing(), file.access(roots, 7L), Sys.readlink(roots), getwd())
  clean_state <- NULL
  root_modes <- NULL
  # Files a snippet wrote anywhere it could, for the file-size verdict.
  written <- function() {
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
  # Back to the state after start: only the kept dirs, empty, with their modes, and this
  # process working in the work dir. Skipped when nothing changed (`state_of()`).
  wipe <- function() {
    for (d in c(state_dir, tmp_root, work_dir)) {
      if (!dir.exists(d) || nzchar(Sys.readlink(d))) unlink(d, recursive = TRUE, force = TRUE)
      dir.create(d, showWarnings = FALSE, mode = "0700")
    }
    if (!is.null(root_modes)) Sys.chmod(roots, root_modes, use_umask = FALSE)
    unlink(setdiff(listing(), kept_paths), recursive = TRUE, force = TRUE)
    setwd(work_dir)
    if (is.null(root_modes)) root_modes <<- file.mode(roots)
    clean_state <<- state_of()
  }
  read_head <- function(path, n) {
    con <- file(path, open = "rb", raw = TRUE)
    on.exit(close(con))
    raw <- readBin(con, "raw", n = n)
    size <- length(raw)
    if (size >= n) {
      seek(con, 0, origin = "end")
      size <- seek(con, 0, origin = "end")
    }
    list(text = rawToChar(raw[raw != as.raw(0)]), size = size)
  }
  # The line of the last top-level expression the child started (it appends one per expression).
  read_progress <- function() {
    lines <- tryCatch(readLines(progress_path, warn = FALSE), error = function(e) character())
    v <- suppressWarnings(as.integer(lines[length(lines)]))
    if (length(v) && !is.na(v)) v else NA_integer_
  }

  # ---- the snippet: parsed here, run in the child ---------------------------------------------
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
  # Parsing cannot touch anything a snippet could see, so it happens here, before the fork:
  # code that does not parse gets its verdict without a child at all.
  parse_snippet <- function(code) {
    exprs <- tryCatch(parse(text = code, keep.source = TRUE, encoding = "UTF-8"), error = function(e) e)
    if (!inherits(exprs, "error")) return(exprs)
    msg <- conditionMessage(exprs)
    m <- regmatches(msg, regexec("^(<text>:)?([0-9]+):([0-9]+): ", msg))[[1L]]
    list(
      verdict = "parse_error",
      message = sub("^(<text>:)?([0-9]+):([0-9]+): ", "line \\2:\\3: ", msg),
      line = if (length(m)) as.integer(m[3L]) else NULL
    )
  }
  run_snippet <- function(exprs) {
    warnings <- character()
    failing_call <- NULL
    deep_line <- NA_integer_
    current <- 0L
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
    outcome <- tryCatch(
      withCallingHandlers(
        {
          for (i in seq_along(exprs)) {
            current <- i
            # Bookkeeping must not become the snippet's error (closeAllConnections()):
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
          sprintf("used more than %g s of CPU time (%s)", limits$cpu_s, msg)
        } else {
          sprintf("still running after %g s (%s)", limits$wall_s, msg)
        }
      }
      return(list(verdict = verdict, message = msg, failing_call = failing_call, line = line, warnings = warnings))
    }
    list(verdict = "passed", warnings = warnings)
  }

  # ---- the child: everything it needs is in place already (descriptors 0-2, the working
  # directory, HOME); it lets go of our pipes, runs the snippet and sends back a list ----------
  child_main <- function(exprs) {
    # Whatever goes wrong, the child ends here: an error must never unwind into the parent's loop.
    res <- tryCatch({
      compiler::enableJIT(0) # as parallel::mcfork() does in a child
      # parallel gives a child a pipe from the parent as stdin; /dev/null takes its place
      # (a closed descriptor is the lowest free one, so the file lands on 0).
      parallel:::closeFD(c(0L, private_fds))
      stdin_null <- file("/dev/null", open = "r")
      sink(stdout(), type = "message")
      options(warn = 0L)
      if (limits$cpu_s > 0) setTimeLimit(cpu = limits$cpu_s, elapsed = limits$wall_s)
      run_snippet(exprs)
    }, error = function(e) list(verdict = "runtime_error", message = conditionMessage(e)))
    setTimeLimit()
    try(flush(stdout()), silent = TRUE)
    try(.Call(mc_send, serialize(res, NULL, xdr = FALSE)), silent = TRUE)
    .Call(mc_exit, 0L)
  }

  # ---- the parent: fork, watch wall clock, CPU, memory and output, clean up -----------------
  dirty <- FALSE # set while a snippet's leftovers may be around: the next one starts clean anyway
  handle <- function(id, code) {
    started <- proc.time()[["elapsed"]]
    exprs <- parse_snippet(code)
    if (!is.expression(exprs)) {
      return(c(exprs, list(id = id, duration_ms = round((proc.time()[["elapsed"]] - started) * 1000, 3))))
    }
    if (dirty) cleanup()
    dirty <<- TRUE
    pid <- .Call(mc_fork, FALSE)[1L]
    if (pid == 0L) child_main(exprs)
    data <- NULL
    stopped <- NULL
    last_cpu <- 0
    peak_mem <- 0
    repeat {
      ready <- .Call(mc_select, 0.02, pid)
      if (is.integer(ready) && pid %in% ready) {
        # One message is the whole result; EOF (an integer) means the child died without one.
        chunk <- .Call(mc_read, pid)
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
      if (!is.na(out_size) && out_size > limits$output_bytes) {
        stopped <- "output_limit"
      } else if (mem > limits$total_mem_bytes) {
        stopped <- "memory_limit"
      } else if (elapsed > limits$wall_s + 0.25) {
        stopped <- "timeout"
      } else if (limits$cpu_s > 0 && last_cpu > limits$cpu_s + 0.25) {
        stopped <- "cpu"
      }
      if (!is.null(stopped)) {
        kill9(pid)
        sweep(-1L)
        .Call(mc_read, pid)
        break
      }
    }
    duration <- proc.time()[["elapsed"]] - started
    # With its result sent the child has nothing left to do (it would only wait for
    # parallel's exit handshake): end it now. The sweep then kills whatever else is alive;
    # the child itself does not count as left behind.
    if (!is.null(data)) {
      .Call(mc_kill, pid, 9L) # alive: it waits to be told it may exit
      # Its pipe reads EOF once the kernel has torn its memory down (before its files):
      # until then every page this process writes is a shared page, copied on write.
      ready <- .Call(mc_select, 0.1, pid)
      if (is.integer(ready) && pid %in% ready) .Call(mc_read, pid)
    }
    leftover <- sweep(pid)
    .Call(mc_rm, pid)
    # rmChild() detaches the child but leaves its entry in parallel's list of children, and
    # every fork walks that list (the child frees it, copying a page per entry): drop the
    # entries of children that are gone, as mccollect() would, or each fork costs more.
    .Call(mc_cleanup, FALSE, FALSE, FALSE)
    res <- if (!is.null(data)) tryCatch(unserialize(data), error = function(e) NULL) else NULL
    if (is.null(res)) {
      # No result: the console and the files it wrote tell what stopped it.
      out <- read_head(console, 4096L)
      big <- written()
      res <- if (identical(stopped, "output_limit") || out$size > limits$output_bytes) {
        list(verdict = "output_limit", message = sprintf("printed more than %.0f bytes", limits$output_bytes))
      } else if (identical(stopped, "memory_limit")) {
        list(verdict = "memory_limit", message = sprintf(
          "its processes held more than %.0f MB of memory together", limits$total_mem_bytes / 2^20))
      } else if (identical(stopped, "timeout")) {
        list(verdict = "timeout", message = sprintf("still running after %g s (wall clock)", limits$wall_s))
      } else if (identical(stopped, "cpu") || (limits$cpu_s > 0 && last_cpu >= limits$cpu_s - 0.1)) {
        list(verdict = "timeout", message = sprintf("used more than %g s of CPU time", limits$cpu_s))
      } else if (big$size >= limits$file_bytes) {
        list(verdict = "output_limit", message = sprintf(
          "wrote a file of %.0f bytes (%s), the most a file may hold", big$size, basename(big$path)))
      } else {
        tail <- if (grepl("caught segfault|caught illegal|caught bus error", out$text, useBytes = TRUE)) "; R reported a crash" else ""
        list(verdict = "killed", message = paste0("the R process died before the script finished", tail))
      }
      if (is.null(res$line)) {
        progress_line <- read_progress()
        if (!is.na(progress_line)) res$line <- progress_line
      }
    }
    if (leftover > 0L && identical(res$verdict, "passed")) {
      res$verdict <- "killed"
      res$message <- sprintf("left %d background process(es) running after it finished; they were killed", leftover)
    }
    c(res, list(
      id = id, duration_ms = round(duration * 1000, 3), cpu_ms = round(last_cpu * 1000),
      peak_mem_bytes = peak_mem, leftover_processes = leftover,
      # Without a PID namespace the processes killed above are reaped by the host's init, on
      # its own time; until then they count against this uid's process limit. A fresh worker
      # (on a fresh uid) is the clean way on.
      retire = own_uid && (leftover > 0L || !is.null(stopped))
    ))
  }
  # After a snippet, once its reply is out: the files and dirs as they were (the pool
  # empties the console and the progress file once it has read the reply).
  cleanup <- function() {
    if (!identical(state_of(), clean_state)) wipe()
    dirty <<- FALSE
  }

  # ---- warm-up: what every child would otherwise do for the first time, done once here --------
  # R byte-compiles a function the first time it is called and lazy-loads base functions on
  # first use; in a forked child both are lost with the child. Running the snippet machinery
  # once on an empty snippet, and printing a few values into a throw-away connection, leaves
  # them compiled and loaded in this process. Nothing reaches the global environment, the
  # search path, the options or the RNG: a snippet still starts as a fresh Rscript would.
  local({
    run_snippet(parse_snippet("invisible(NULL)"))
    parse_snippet("(")
    utils::capture.output(print(1.5), print(c(a = 1L)), print("a"), print(TRUE), print(list(1)), cat("a\n"))
    serialize(list(verdict = "passed", warnings = character()), NULL, xdr = FALSE)
    reply_line(list(id = 0L, verdict = "passed", warnings = "w", line = 1L, duration_ms = 1.5))
    invisible(NULL)
  })
  Sys.setenv(HOME = work_dir) # once here: every child inherits it, and a snippet's change dies with its child
  wipe()
  baseline_rss <- { s <- proc_stat(self_pid); if (is.null(s)) 0 else s$rss_bytes }
  send(paste("ready", paste(R.version$major, R.version$minor, sep = "."), self_pid, sep = "\t"))
  repeat {
    header <- readBin(requests, "integer", n = 2L, size = 4L, endian = "little")
    if (length(header) < 2L) break
    code <- rawToChar(readBin(requests, "raw", n = header[2L]))
    Encoding(code) <- "UTF-8"
    # A worker that failed its own bookkeeping asks to be replaced: a snippet may have
    # broken its state, and the next one deserves a clean sandbox.
    reply <- tryCatch(handle(header[1L], code), error = function(e) {
      list(id = header[1L], verdict = "killed", message = paste("worker error:", conditionMessage(e)), retire = TRUE)
    })
    send(reply_line(reply))
    if (isTRUE(reply$retire)) break
    # While the pool reads the reply. Should it fail, the next request tries again first,
    # inside handle(), where a failure retires the worker.
    if (dirty) try(cleanup(), silent = TRUE)
  }
})
