# qasynth's warm R worker. One R process starts once, loads what every snippet
# shares, then forks a throw-away child per snippet: globals, options, attached
# packages, RNG state and open devices never reach the next snippet, and a
# snippet starts in a few milliseconds instead of the ~0.3 s of a fresh Rscript.
#
# This process never holds a byte a snippet chose. The code reaches only the child (it
# reads and parses it after the fork); the child's result goes to the pool, not here;
# this process watches the child through numbers the kernel gives (/proc/<pid>/statm and
# schedstat, file sizes and times) and answers with what it measured itself. Every later
# fork is a copy of this process, so nothing of an earlier snippet is in it.
#
# Descriptors, set up by whoever starts it (evaluator/_pool.py):
#   0       /dev/null: a snippet reading stdin reads nothing, as in a script run
#   1, 2    the "console": one in-memory file, opened for appending, where printed output,
#           messages and the output of system() all land, as in a terminal. The pool reads
#           it after each reply and empties it; this process never writes to it.
#   <req>   requests: two little-endian 32-bit integers, a job number and 0
#   <rep>   replies, one line each of tab-separated fields: first "ready", R's version and
#           this process's pid (or "failed" and why), then per request: job, ended (the
#           child ended by itself: 1/0), stop (why this process stopped it, or empty),
#           duration_ms, cpu_ms, peak_mem_bytes, leftover_processes, retire (0/1), dirty
#           (the scratch space changed and was wiped: 0/1), error (this process's own)
#   <abort> the pool writes a byte here to have the running snippet stopped (non-blocking)
#   <prog>  the "progress" file: the child appends the line of each top-level expression
#   <code>  the snippet's code, written by the pool before each request
#   <res>   the child's result (see write_result), read by the pool
#   <files> after a wipe: the largest file the snippet wrote ("bytes<TAB>name"), for the pool
# The pipes are closed in every child; the memory files are reopened by path in the child.
#
# Usage: R --vanilla --no-echo --file=worker.R --args <mode 0|1|2> <packages,comma,separated>
#        <req> <rep> <abort> <prog> <code> <res> <files>
#        <wall_s> <cpu_s> <output_bytes> <total_mem_bytes> <file_bytes>
#
# Mode 1, inside the bubblewrap sandbox: this process is pid 2 of its PID namespace, alone
# with the sandbox's reaper (pid 1), so every other process was started by a snippet.
# Mode 2, no namespaces but a uid of its own: every other process of this uid was started
# by a snippet. Either way, after each snippet they are all killed, and while a snippet
# runs their resident memory is added up against the total. Mode 0 (no namespace, a
# shared uid) can do neither.
local({
  args <- commandArgs(trailingOnly = TRUE)
  sandboxed <- identical(args[1L], "1")
  own_uid <- identical(args[1L], "2")
  packages <- if (length(args) >= 2L && nzchar(args[2L])) strsplit(args[2L], ",", fixed = TRUE)[[1L]] else character()
  fds <- suppressWarnings(as.integer(args[3:9]))
  limits <- suppressWarnings(as.numeric(args[10:14]))
  if (anyNA(fds) || anyNA(limits)) stop("worker.R needs its descriptors and limits")
  names(limits) <- c("wall_s", "cpu_s", "output_bytes", "total_mem_bytes", "file_bytes")
  limits <- as.list(limits)
  fd_path <- function(fd) sprintf("/proc/self/fd/%d", fd)
  console <- fd_path(1L)
  progress_path <- fd_path(fds[4L])
  code_path <- fd_path(fds[5L])
  result_path <- fd_path(fds[6L])
  files_path <- fd_path(fds[7L])
  options(warn = -1L)

  # ---- text fields: tab-separated, backslash, tab, CR and newline escaped ------------------
  escape <- function(x) {
    x <- gsub("\\", "\\\\", enc2utf8(as.character(x)), fixed = TRUE, useBytes = TRUE)
    x <- gsub("\t", "\\t", x, fixed = TRUE, useBytes = TRUE)
    x <- gsub("\r", "\\r", x, fixed = TRUE, useBytes = TRUE)
    gsub("\n", "\\n", x, fixed = TRUE, useBytes = TRUE)
  }
  # At most `n` bytes of a string, cut on a character boundary where R can tell.
  clip <- function(x, n) {
    x <- enc2utf8(as.character(x))
    long <- nchar(x, type = "bytes") > n
    if (any(long)) {
      x[long] <- vapply(x[long], function(s) {
        cut <- tryCatch(substr(s, 1L, n %/% 4L), error = function(e) NULL)
        if (is.null(cut)) cut <- rawToChar(charToRaw(s)[seq_len(n)])
        paste0(cut, " [...]")
      }, "", USE.NAMES = FALSE)
    }
    x
  }
  reply_line <- function(r) {
    num <- function(x, d = 0) if (is.null(x) || !length(x) || is.na(x[1L])) d else as.numeric(x[1L])
    paste(
      r$id, as.integer(isTRUE(r$ended)), if (is.null(r$stop)) "" else r$stop,
      sprintf("%.3f", num(r$duration_ms)), sprintf("%.0f", num(r$cpu_ms)), sprintf("%.0f", num(r$peak_mem_bytes)),
      as.integer(num(r$leftover_processes)), as.integer(isTRUE(r$retire)), as.integer(isTRUE(r$dirty)),
      escape(if (is.null(r$error)) "" else substr(r$error, 1L, 200L)),
      sep = "\t"
    )
  }

  # ---- the channels: R cannot adopt a descriptor it inherited, but it can open the same
  # pipe again through /proc/self/fd; the inherited numbers are then closed -----------------
  requests <- file(fd_path(fds[1L]), open = "rb", blocking = TRUE, raw = TRUE)
  replies <- file(fd_path(fds[2L]), open = "w", raw = TRUE)
  aborts <- file(fd_path(fds[3L]), open = "rb", blocking = FALSE, raw = TRUE)
  parallel:::closeFD(fds[1:3])
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

  # Descriptors a child must not keep: every pipe this process has (requests, replies,
  # aborts, reopened above). A child that could write to a pipe of ours could forge a reply.
  private_fds <- local({
    fds <- setdiff(suppressWarnings(as.integer(list.files("/proc/self/fd"))), 0:2)
    fds[startsWith(Sys.readlink(fd_path(fds)), "pipe:")]
  })
  # parallel's own entry points, called directly: its R wrappers only check what is known to
  # be right here, and each call in a parent that has just forked costs page faults.
  # Nothing here ever reads what a snippet's child sends on parallel's pipe: the pipe only
  # tells that the child has ended (or is misbehaving, and is then killed). The one message
  # ever read is the janitor's single byte, sent while no snippet process is alive.
  mc_fork <- parallel:::C_mc_fork
  mc_select <- parallel:::C_mc_select_children
  mc_rm <- parallel:::C_mc_rm_child
  mc_kill <- parallel:::C_mc_kill
  mc_cleanup <- parallel:::C_mc_cleanup
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

  # ---- the sandbox's processes, from /proc: numbers only (a process's name is the snippet's
  # to choose, so /proc/<pid>/stat and status are never read) --------------------------------
  read_numbers <- function(path) {
    line <- tryCatch(readLines(path, n = 1L, warn = FALSE), error = function(e) character())
    if (!length(line)) return(NULL)
    as.numeric(strsplit(line, " ", fixed = TRUE)[[1L]])
  }
  # Resident bytes, or NULL when the process is gone; 0 pages in all means a zombie.
  proc_mem <- function(pid) {
    v <- read_numbers(sprintf("/proc/%d/statm", pid))
    if (is.null(v)) NULL else c(size = v[1L], rss = v[2L] * page_bytes)
  }
  proc_cpu_s <- function(pid) {
    v <- read_numbers(sprintf("/proc/%d/schedstat", pid))
    if (is.null(v)) NA_real_ else v[1L] / 1e9
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
      m <- proc_mem(p)
      if (!is.null(m)) total <- total + max(0, m[["rss"]] - baseline_rss)
    }
    total
  }
  # Kill every process but the reaper and this worker, until none is left alive. `child`,
  # the snippet's own process, is already dead or dying by now and is not counted.
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
        m <- proc_mem(p)
        !is.null(m) && m[["size"]] > 0
      }, logical(1))]
      if (!length(live)) break
      kill9(live)
      killed <- union(killed, live)
      Sys.sleep(0.0005)
    }
    length(killed)
  }
  # A process that was killed frees its memory before it closes its files; until it is gone,
  # every page this process writes is a shared page, copied on write.
  await_teardown <- function(pid) {
    for (i in 1:500) {
      m <- proc_mem(pid)
      if (is.null(m) || m[["size"]] == 0) return(invisible())
      Sys.sleep(0.0002)
    }
  }

  # ---- the scratch space: where a snippet can write -----------------------------------------
  # Whether it changed is told by the places' own inode numbers: size (a tmpfs directory
  # counts its entries) and change time (any entry added, removed or renamed, a mode or a
  # time changed). Nothing else in them can change: the only files kept are this script and
  # R's binary, on read-only mounts. Only when they changed does a janitor, a child forked for the purpose,
  # list and wipe them and say how large the largest file was; this process never sees a name.
  roots <- unique(c(tmp_base, state_dir, tmp_root, work_dir, if (sandboxed) "/dev/shm"))
  kept_paths <- c(state_dir, tmp_root, work_dir, list.files(state_dir, all.files = TRUE, full.names = TRUE, no.. = TRUE))
  stamp <- function() {
    info <- .Internal(file.info(roots, FALSE))
    c(info$size, info$isdir, info$mode, unclass(info$ctime))
  }
  clean_stamp <- NULL
  root_modes <- NULL
  # The files under `dirs`, never through a symbolic link (list.files(recursive = TRUE) would
  # follow one to /usr and list it all), and at most 100,000 entries.
  walk <- function(dirs) {
    files <- character()
    sizes <- numeric()
    seen <- 0L
    while (length(dirs) && seen < 100000L) {
      d <- dirs[1L]
      dirs <- dirs[-1L]
      entries <- list.files(d, all.files = TRUE, full.names = TRUE, no.. = TRUE)
      seen <- seen + length(entries)
      entries <- entries[!nzchar(Sys.readlink(entries))]
      if (!length(entries)) next
      info <- file.info(entries, extra_cols = FALSE)
      isdir <- info$isdir %in% TRUE
      dirs <- c(dirs, entries[isdir])
      files <- c(files, entries[!isdir])
      sizes <- c(sizes, info$size[!isdir])
    }
    list(files = files, sizes = sizes)
  }
  janitor_main <- function() {
    tryCatch({
      parallel:::closeFD(c(0L, private_fds))
      found <- walk(setdiff(roots, c(state_dir, tmp_root, work_dir)))
      keep <- !startsWith(found$files, state_dir)
      files <- found$files[keep]
      sizes <- found$sizes[keep]
      sizes[is.na(sizes)] <- 0
      for (d in c(state_dir, tmp_root, work_dir)) {
        if (!dir.exists(d) || nzchar(Sys.readlink(d))) unlink(d, recursive = TRUE, force = TRUE)
        dir.create(d, showWarnings = FALSE, mode = "0700")
      }
      Sys.chmod(roots, root_modes, use_umask = FALSE)
      listing <- list.files(roots, all.files = TRUE, full.names = TRUE, no.. = TRUE)
      # A directory the snippet made unreadable or unwritable is opened up before it goes.
      left <- setdiff(listing, kept_paths)
      for (round in 1:3) {
        if (!length(left)) break
        dirs <- left[file.info(left, extra_cols = FALSE)$isdir %in% TRUE & !nzchar(Sys.readlink(left))]
        while (length(dirs)) { # open up every directory below, top down, never through a link
          Sys.chmod(dirs, "0700", use_umask = FALSE)
          below <- list.files(dirs, all.files = TRUE, full.names = TRUE, no.. = TRUE)
          below <- below[!nzchar(Sys.readlink(below))]
          dirs <- below[file.info(below, extra_cols = FALSE)$isdir %in% TRUE]
        }
        unlink(left, recursive = TRUE, force = TRUE)
        left <- setdiff(list.files(roots, all.files = TRUE, full.names = TRUE, no.. = TRUE), kept_paths)
      }
      report <- file(files_path, open = "wb", raw = TRUE)
      if (length(sizes)) {
        i <- which.max(sizes)
        writeLines(paste0(format(sizes[i], scientific = FALSE), "\t", escape(clip(basename(files[i]), 200L))),
                   report, useBytes = TRUE)
      }
      close(report)
      # The verdict on the wipe, for the parent: a directory still not as it was is a failure.
      ok <- !length(left) && all(dir.exists(c(state_dir, tmp_root, work_dir)))
      if (ok) .Call(parallel:::C_mc_send_master, as.raw(1L))
    }, error = function(e) NULL)
    .Call(mc_kill, Sys.getpid(), 9L)
  }
  # Fork the janitor and wait for it; TRUE when it wiped everything (it then sends one byte,
  # its own: no snippet process is alive while it runs).
  wipe <- function() {
    pid <- .Call(mc_fork, FALSE)[1L]
    if (pid == 0L) janitor_main()
    ok <- FALSE
    t0 <- proc.time()[["elapsed"]]
    repeat {
      ready <- .Call(mc_select, 0.05, pid)
      if (is.null(ready)) break
      if (is.integer(ready) && pid %in% ready) {
        msg <- .Call(parallel:::C_mc_read_child, pid)
        ok <- is.raw(msg) && length(msg) == 1L && msg[1L] == as.raw(1L)
        break
      }
      if (proc.time()[["elapsed"]] - t0 > 10) break
    }
    kill9(pid)
    await_teardown(pid)
    .Call(mc_rm, pid)
    .Call(mc_cleanup, FALSE, FALSE, FALSE)
    setwd(work_dir)
    clean_stamp <<- stamp()
    ok
  }

  # ---- the snippet: read, parsed and run in the child -----------------------------------------
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
  # The snippet's own files, opened by this process just before each fork (when no child
  # shares its pages, so opening costs no copies) and closed after: each snippet gets open
  # files of its own, and nothing it does to them (offsets, flags) reaches the next one.
  code_con <- progress <- result_con <- NULL
  open_snippet_files <- function() {
    code_con <<- file(code_path, open = "rb", raw = TRUE)
    progress <<- file(progress_path, open = "a", raw = TRUE)
    result_con <<- file(result_path, open = "wb", raw = TRUE)
  }
  close_snippet_files <- function() {
    for (con in list(code_con, progress, result_con)) try(close(con), silent = TRUE)
  }
  read_code <- function() {
    size <- file.size(code_path)
    code <- if (is.na(size) || size <= 0) "" else rawToChar(readBin(code_con, "raw", n = size))
    Encoding(code) <- "UTF-8"
    code
  }
  parse_snippet <- function(code) {
    # Source references for the lines, without the token table (getParseData) that nothing
    # here reads: building it is most of what parsing a short snippet allocates.
    op <- options(keep.parse.data = FALSE)
    exprs <- tryCatch(parse(text = code, keep.source = TRUE, encoding = "UTF-8"), error = function(e) e)
    options(op)
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
  # The result, for the pool: one field a line, text escaped and clipped (the message to
  # 4,000 bytes, the call to 400, up to 50 warnings of 1,000), ended by "end".
  result_lines <- function(res) {
    field <- function(key, value) if (is.null(value) || !length(value)) character() else paste0(key, "\t", escape(value))
    c(
      "qasynth-result 1",
      field("verdict", res$verdict),
      field("line", if (is.null(res$line)) NULL else as.integer(res$line[1L])),
      field("message", if (is.null(res$message)) NULL else clip(paste(res$message, collapse = "\n"), 4000L)),
      field("call", if (is.null(res$failing_call)) NULL else clip(res$failing_call[1L], 400L)),
      field("warning", clip(utils::head(as.character(res$warnings), 50L), 1000L)),
      "end"
    )
  }
  write_result <- function(res) {
    lines <- result_lines(res)
    # The snippet may have closed every connection (closeAllConnections()), or opened its
    # own under the same number: then the result file is opened again by its path.
    ok <- tryCatch({
      if (!identical(summary(result_con)$description, result_path)) stop("not ours")
      writeLines(lines, result_con, useBytes = TRUE)
      flush(result_con)
      TRUE
    }, error = function(e) FALSE)
    if (!ok) {
      out <- file(result_path, open = "wb", raw = TRUE)
      writeLines(lines, out, useBytes = TRUE)
      close(out)
    }
  }

  # ---- the child: everything it needs is in place already (descriptors 0-2, the working
  # directory, HOME); it lets go of our pipes, reads and runs the snippet, writes its result
  # and ends itself ---------------------------------------------------------------------------
  child_main <- function() {
    # Whatever goes wrong, the child ends here: an error must never unwind into the parent's loop.
    res <- tryCatch({
      compiler::enableJIT(0) # as parallel::mcfork() does in a child
      # parallel gives a child a pipe from the parent as stdin; /dev/null takes its place
      # (a closed descriptor is the lowest free one, so the file lands on 0).
      parallel:::closeFD(c(0L, private_fds))
      stdin_null <- file("/dev/null", open = "r")
      sink(stdout(), type = "message")
      exprs <- parse_snippet(read_code())
      if (is.expression(exprs)) {
        options(warn = 0L)
        if (limits$cpu_s > 0) setTimeLimit(cpu = limits$cpu_s, elapsed = limits$wall_s)
        run_snippet(exprs)
      } else {
        exprs
      }
    }, error = function(e) list(verdict = "runtime_error", message = conditionMessage(e)))
    setTimeLimit()
    try(flush(stdout()), silent = TRUE)
    try(write_result(res), silent = TRUE)
    .Call(mc_kill, Sys.getpid(), 9L)
  }

  # ---- the parent: fork, watch wall clock, CPU, memory and output, clean up -----------------
  elapsed <- function() proc.time()[["elapsed"]]
  handle <- function(id) {
    started <- elapsed()
    open_snippet_files()
    pid <- .Call(mc_fork, FALSE)[1L]
    if (pid == 0L) child_main()
    ended <- FALSE
    stopped <- NULL
    last_cpu <- 0
    peak_mem <- 0
    repeat {
      ready <- .Call(mc_select, 0.02, pid)
      # The child's pipe is readable when it has ended, or when it wrote to it: either way
      # it is done. Nothing is ever read from it.
      if (is.null(ready) || (is.integer(ready) && pid %in% ready)) {
        ended <- TRUE
        break
      }
      m <- proc_mem(pid)
      if (is.null(m) || m[["size"]] == 0) { # gone, or a zombie (a background process holds its pipe)
        ended <- TRUE
        break
      }
      cpu <- proc_cpu_s(pid)
      if (!is.na(cpu)) last_cpu <- cpu
      mem <- snippet_rss()
      peak_mem <- max(peak_mem, mem)
      out_size <- file.size(console)
      if (length(readBin(aborts, "raw", 64L))) {
        stopped <- "cancelled"
      } else if (!is.na(out_size) && out_size > limits$output_bytes) {
        stopped <- "output_limit"
      } else if (mem > limits$total_mem_bytes) {
        stopped <- "memory_limit"
      } else if (elapsed() - started > limits$wall_s + 0.25) {
        stopped <- "timeout"
      } else if (limits$cpu_s > 0 && last_cpu > limits$cpu_s + 0.25) {
        stopped <- "cpu"
      }
      if (!is.null(stopped)) {
        kill9(pid)
        sweep(-1L)
        break
      }
    }
    duration <- elapsed() - started
    kill9(pid) # gone already, unless it wrote to its pipe while alive
    # A child that ended itself has freed its memory before its pipe closed; one stopped here
    # is waited for, or every page this process writes until it is gone is copied.
    if (!is.null(stopped)) await_teardown(pid)
    leftover <- sweep(pid)
    close_snippet_files()
    .Call(mc_rm, pid)
    # rmChild() detaches the child but leaves its entry in parallel's list of children, and
    # every fork walks that list (the child frees it, copying a page per entry): drop the
    # entries of children that are gone, as mccollect() would, or each fork costs more.
    .Call(mc_cleanup, FALSE, FALSE, FALSE)
    dirty <- !identical(stamp(), clean_stamp)
    wiped <- !dirty || wipe()
    list(
      id = id, ended = ended, stop = stopped, duration_ms = round(duration * 1000, 3),
      cpu_ms = round(last_cpu * 1000), peak_mem_bytes = peak_mem, leftover_processes = leftover,
      dirty = dirty, error = if (!wiped) "the scratch space could not be wiped",
      # Without a PID namespace the processes killed above are reaped by the host's init, on
      # its own time; until then they count against this uid's process limit. A fresh worker
      # (on a fresh uid) is the clean way on. A failed wipe retires the worker too.
      retire = !wiped || (own_uid && (leftover > 0L || !is.null(stopped)))
    )
  }

  # ---- warm-up: what every child would otherwise do for the first time, done once here --------
  # R byte-compiles a function the first time it is called and lazy-loads base functions on
  # first use; in a forked child both are lost with the child. Running the snippet machinery
  # once on fixed text, and printing a few values into a throw-away connection, leaves them
  # compiled and loaded in this process. Nothing reaches the global environment, the search
  # path, the options or the RNG: a snippet still starts as a fresh Rscript would.
  local({
    run_snippet(parse_snippet("invisible(NULL)"))
    parse_snippet("(")
    utils::capture.output(print(1.5), print(c(a = 1L)), print("a"), print(TRUE), print(list(1)), cat("a\n"))
    result_lines(list(verdict = "runtime_error", message = "m", failing_call = "f()", line = 1L, warnings = "w"))
    reply_line(list(id = 0L, ended = TRUE, duration_ms = 1.5))
    # And what the child does around the snippet (every base function a child calls for the
    # first time is loaded into that child alone, and thrown away with it).
    open_snippet_files()
    read_code()
    write_result(list(verdict = "passed", message = "m", warnings = "w"))
    close_snippet_files()
    parallel:::closeFD(integer())
    close(file("/dev/null", open = "r"))
    sink(stdout(), type = "message")
    sink(type = "message")
    setTimeLimit()
    try(flush(stdout()), silent = TRUE)
    compiler::enableJIT(compiler::enableJIT(-1L))
    Encoding("a")
    Sys.getpid()
    invisible(NULL)
  })
  Sys.setenv(HOME = work_dir) # once here: every child inherits it, and a snippet's change dies with its child
  dir.create(work_dir, showWarnings = FALSE, mode = "0700")
  root_modes <- file.mode(roots)
  if (!wipe()) {
    send("failed\tthe scratch space could not be prepared")
    quit(save = "no", status = 3L)
  }
  baseline_rss <- { m <- proc_mem(self_pid); if (is.null(m)) 0 else m[["rss"]] }
  send(paste("ready", paste(R.version$major, R.version$minor, sep = "."), self_pid, sep = "\t"))
  repeat {
    header <- readBin(requests, "integer", n = 2L, size = 4L, endian = "little")
    if (length(header) < 2L) break
    # A worker that failed its own bookkeeping asks to be replaced: a snippet may have
    # broken its state, and the next one deserves a clean sandbox.
    reply <- tryCatch(handle(header[1L]), error = function(e) {
      list(id = header[1L], error = paste("worker error:", conditionMessage(e)), retire = TRUE)
    })
    send(reply_line(reply))
    if (isTRUE(reply$retire)) break
  }
})
