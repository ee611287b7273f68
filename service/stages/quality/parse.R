local({
  lines <- {{lines}}
  seed <- {{seed}}
  data <- tryCatch(getParseData(parse(text = lines, keep.source = TRUE)), error = function(e) NULL)
  if (is.null(data)) {
    .qasynth_emit("unparsable")
    return(invisible(NULL))
  }
  tk <- data[data$terminal & data$line1 == data$line2, ]
  tk <- tk[order(tk$line1, tk$col1), ]
  for (i in which(tk$token == "COMMENT")) .qasynth_emit("comment", tk$line1[i], tk$col1[i], tk$col2[i], tk$text[i])
  usable <- !grepl("\t", lines[tk$line1])
  swap_token <- function(i, new) {
    s <- lines[tk$line1[i]]
    paste0(substr(s, 1L, tk$col1[i] - 1L), new, substr(s, tk$col2[i] + 1L, nchar(s)))
  }
  nxt <- c(tk$token[-1L], "")
  prv <- c("", tk$token[-nrow(tk)])
  # an object used after it was defined, misspelled
  defined <- tk$token == "SYMBOL" & nxt %in% c("LEFT_ASSIGN", "EQ_ASSIGN")
  names_defined <- unique(tk$text[defined])
  for (i in which(tk$token == "SYMBOL" & !defined & tk$text %in% names_defined & usable)) {
    first <- min(which(defined & tk$text == tk$text[i]))
    if (first >= i) next
    name <- tk$text[i]
    typo <- if (grepl("_", name)) sub("_", "", name) else if (nchar(name) > 3L) substr(name, 1L, nchar(name) - 1L) else paste0(name, "s")
    if (typo %in% tk$text || exists(typo)) next
    .qasynth_emit("mutation", "missing_object", sprintf("`%s` misspelled as `%s`", name, typo), tk$line1[i], swap_token(i, typo))
  }
  # a function swapped for a similar one
  similar <- c(mean = "median", median = "mean", sd = "var", var = "sd", sum = "mean", max = "min",
               min = "max", cor = "cov", pnorm = "dnorm", dnorm = "pnorm", qnorm = "pnorm", qt = "pt",
               head = "tail", tail = "head", round = "floor", sqrt = "log", colMeans = "colSums",
               rowMeans = "rowSums", quantile = "range", length = "sum")
  for (i in which(tk$token == "SYMBOL_FUNCTION_CALL" & tk$text %in% names(similar) & usable)) {
    other <- similar[[tk$text[i]]]
    .qasynth_emit("mutation", "wrong_function", sprintf("%s() called instead of %s()", other, tk$text[i]), tk$line1[i], swap_token(i, other))
  }
  # a logical argument flipped
  for (i in which(tk$token == "NUM_CONST" & tk$text %in% c("TRUE", "FALSE") & prv == "EQ_SUB" & usable)) {
    flipped <- if (tk$text[i] == "TRUE") "FALSE" else "TRUE"
    arg <- tk$text[max(1L, i - 2L)]
    .qasynth_emit("mutation", "wrong_argument", sprintf("%s = %s instead of %s", arg, flipped, tk$text[i]), tk$line1[i], swap_token(i, flipped))
  }
  # a formula turned round: y ~ x becomes x ~ y
  for (i in which(tk$text == "~" & prv == "SYMBOL" & nxt == "SYMBOL" & usable)) {
    if (i + 2L <= nrow(tk) && tk$line1[i + 2L] == tk$line1[i] && tk$token[i + 2L] %in% c("'+'", "'*'", "':'")) next
    if (tk$line1[i - 1L] != tk$line1[i] || tk$line1[i + 1L] != tk$line1[i]) next
    s <- lines[tk$line1[i]]
    lhs <- tk$text[i - 1L]; rhs <- tk$text[i + 1L]
    new <- paste0(substr(s, 1L, tk$col1[i - 1L] - 1L), rhs, substr(s, tk$col2[i - 1L] + 1L, tk$col1[i + 1L] - 1L),
                  lhs, substr(s, tk$col2[i + 1L] + 1L, nchar(s)))
    .qasynth_emit("mutation", "swapped_formula", sprintf("%s ~ %s written as %s ~ %s", lhs, rhs, rhs, lhs), tk$line1[i], new)
  }
  # print("label:", x) prints only its label (or stops: x is taken for `digits`): cat() was meant
  for (i in which(data$token == "SYMBOL_FUNCTION_CALL" & data$text == "print")) {
    call <- data$parent[data$id == data$parent[i]]
    parts <- data[data$parent == call, ]
    parts <- parts[order(parts$line1, parts$col1), ]
    if (parts$line1[1L] != parts$line2[nrow(parts)] || any(parts$token %in% c("SYMBOL_SUB", "EQ_SUB"))) next
    args <- parts$id[parts$token == "expr"][-1L]
    first <- data[data$parent %in% args[1L], ]
    if (length(args) < 2L || nrow(first) != 1L || first$token != "STR_CONST") next
    s <- lines[parts$line1[1L]]
    close <- parts$col1[nrow(parts)]
    s <- paste0(substr(s, 1L, close - 1L), ', "\\n"', substr(s, close, nchar(s)))
    s <- paste0(substr(s, 1L, data$col1[i] - 1L), "cat", substr(s, data$col2[i] + 1L, nchar(s)))
    .qasynth_emit("mend", "print_label", "print() of a label and a value written as cat()", parts$line1[1L], s)
  }
  .qasynth_emit("parse_done", seed)
})
