#!/usr/bin/env Rscript
# Extracts human-written sentences from the help pages of R's own packages (base, stats,
# utils, graphics, ...: priority "base"), namely titles, descriptions and argument
# descriptions, as JSON lines, one text per line, each with its package, topic, field and
# licence. R's documentation is distributed under GPL-2 | GPL-3. The dedup tests and
# benchmarks use it as a real corpus of short technical texts about R and statistics.
#
# Usage: Rscript scripts/extract_r_help_corpus.R tests/data/r_help_corpus.jsonl

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args) >= 1) args[[1]] else "tests/data/r_help_corpus.jsonl"

squish <- function(x) trimws(gsub("[[:space:]]+", " ", paste(x, collapse = " ")))

# Plain text of an Rd fragment: the character leaves in order, markup dropped.
flatten <- function(el) squish(unlist(el, use.names = FALSE))

rows <- list()
add <- function(pkg, topic, field, text, licence) {
  text <- squish(text)
  if (nchar(text) >= 8) {
    rows[[length(rows) + 1L]] <<- list(
      package = pkg, topic = topic, field = field, text = text, license = licence
    )
  }
}

for (pkg in sort(rownames(installed.packages(priority = "base")))) {
  db <- tryCatch(tools::Rd_db(pkg), error = function(e) list())
  if (length(db) == 0L) next
  licence <- paste0("GPL-2 | GPL-3 (", squish(packageDescription(pkg)$License), ")")
  for (file in sort(names(db))) {
    rd <- db[[file]]
    topic <- sub("\\.Rd$", "", basename(file))
    add(pkg, topic, "title", tools:::.Rd_get_title(rd), licence)
    desc <- tools:::.Rd_get_section(rd, "description")
    if (length(desc)) add(pkg, topic, "description", tools:::.Rd_get_text(desc), licence)
    arguments <- tools:::.Rd_get_section(rd, "arguments")
    for (el in arguments) {
      if (identical(attr(el, "Rd_tag"), "\\item") && length(el) >= 2L) {
        add(pkg, topic, paste0("argument:", flatten(el[[1]])), flatten(el[[2]]), licence)
      }
    }
  }
}

con <- file(out, open = "w", encoding = "UTF-8")
for (row in rows) writeLines(jsonlite::toJSON(row, auto_unbox = TRUE), con, useBytes = TRUE)
close(con)
message(sprintf("wrote %d texts to %s", length(rows), out))
