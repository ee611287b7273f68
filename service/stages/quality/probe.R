print <- function(x, ...) {
  call <- sys.call()
  args <- as.list(call)[-1L]
  named <- names(args)
  if (is.null(named)) named <- character(length(args))
  if (sum(!nzchar(named)) > 1L) {
    fix <- as.call(c(list(as.name("cat")), args[!nzchar(named)], list("\n")))
    .qasynth_emit("print_extra_args", "print() prints only its first argument", deparse1(call), deparse1(fix))
  }
  if (length(args) && is.null(x) && is.call(args[[1L]]) && identical(args[[1L]][[1L]], as.name("cat"))) {
    .qasynth_emit("print_of_cat", "print(cat(...)) prints NULL after what cat() wrote", deparse1(call))
  }
  base::print(x, ...)
}
cat <- function(..., file = "", sep = " ", fill = FALSE, labels = NULL, append = FALSE) {
  for (a in list(...)) {
    what <- if (is.data.frame(a)) "a data frame"
      else if (is.factor(a)) "a factor (cat() writes its integer codes)"
      else if (inherits(a, c("Date", "POSIXt"))) "a date (cat() writes a bare number)"
      else if (inherits(a, "difftime")) "a time difference (cat() drops its unit)"
      else if (inherits(a, "table") || length(dim(a)) > 1L) "a table or matrix (cat() drops its names and layout)"
      else if (is.list(a)) "a list"
      else if (is.object(a) && !is.character(a) && !is.numeric(a) && !is.logical(a)) paste("an object of class", class(a)[1L])
      else NULL
    if (!is.null(what)) {
      .qasynth_emit("cat_of", paste("cat() was given", what), deparse1(sys.call()))
      break
    }
  }
  base::cat(..., file = file, sep = sep, fill = fill, labels = labels, append = append)
}
local({
  exprs <- tryCatch(parse(text = {{lines}}, keep.source = FALSE), error = function(e) NULL)
  .qasynth_emit("probe_start")
  for (e in exprs) eval(e, globalenv())
})
.qasynth_emit("probe_done")
