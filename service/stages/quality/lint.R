local({
  lines <- {{lines}}
  if (!requireNamespace("lintr", quietly = TRUE)) {
    .qasynth_emit("lint_unavailable", "the R package lintr is not installed")
  } else {
    linters <- list({{linters}})
    found <- tryCatch(as.data.frame(lintr::lint(text = lines, linters = linters, parse_settings = FALSE)),
                      error = function(e) e)
    if (inherits(found, "error")) {
      .qasynth_emit("lint_error", conditionMessage(found))
    } else {
      for (i in seq_len(min(nrow(found), {{max_lints}}))) {
        .qasynth_emit("lint", found$line_number[i], found$column_number[i], found$linter[i], found$message[i])
      }
    }
  }
  .qasynth_emit("lint_done")
})
