"""Task-aware checks of questions and answers, and the policy that says which of them block.

    policy_for(task, kind, overrides) -> Policy     the declared severities, with a spec's overrides
    check_question(sandbox, ...) -> (checks, QuestionFacts)
    check_answer(sandbox, ...) -> checks
    combine(*checks) -> Quality                    what a pair carries: the checks and one `flagged`
    diversity(texts) -> float                      mean highest ROUGE-L of each text against the others

Every check is named (`service.wire.evaluate.CheckName`) and carries its evidence; R code is only
ever run in the sandbox, through the runner the caller hands in.
"""

from service.stages.quality._checks import (
    AnswerChecks,
    QuestionFacts,
    check_answer,
    check_question,
    combine,
    says_output_is_wrong,
)
from service.stages.quality._diversity import diversity
from service.stages.quality._locale import judge_locale, warm_up
from service.stages.quality._markdown import fences, prose, shown_output
from service.stages.quality._output import compare_output
from service.stages.quality._policy import BUILT_IN, Policy, linters_for, policy_for
from service.stages.quality._rcode import parse_snippet, parse_tokens, r_string

__all__ = [
    "BUILT_IN",
    "AnswerChecks",
    "Policy",
    "QuestionFacts",
    "check_answer",
    "check_question",
    "combine",
    "compare_output",
    "diversity",
    "fences",
    "judge_locale",
    "linters_for",
    "parse_snippet",
    "parse_tokens",
    "policy_for",
    "prose",
    "r_string",
    "says_output_is_wrong",
    "shown_output",
    "warm_up",
]
