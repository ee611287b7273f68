.qasynth_marker <- {{marker}}
.qasynth_emit <- function(kind, ...) {
  fields <- gsub("[\t\n\r]", " ", vapply(list(...), function(x) paste(as.character(x), collapse = " "), ""))
  base::cat("\n", .qasynth_marker, "\t", kind, "\t", paste(fields, collapse = "\t"), "\n",
            sep = "", file = stderr())
}
