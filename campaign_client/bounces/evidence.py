"""Which kind of inbound message this is, decided by evidence (pure).

Several signs are weighed, none alone decides, and the bounce test comes first: Exim, mail.ru
and Google Groups put `Auto-Submitted: auto-replied` on every bounce, and many servers send
their bounces with `Precedence: junk` or a "Re:"-less subject, so auto-reply headers only count
when nothing says "this is a failure report".

- complaint: an RFC 5965 report (report-type=feedback-report or a message/feedback-report part,
  or its Feedback-Type field in the text), or Microsoft's JMRP-style "complaint about message".
- bounce (kind "dsn"): a delivery-status part or DSN fields, X-Failed-Recipients, a sender
  that is a mailer daemon / postmaster / mail delivery system together with a failure subject
  or text, or failure text with failed recipients found by `shapes`.
- auto_reply: RFC 3834 `Auto-Submitted: auto-replied`, X-Autoreply / X-Autorespond,
  `Precedence: auto_reply`, an out-of-office / vacation / automatic-reply subject (English and
  the common translations) or body, or a challenge-response ("verify", "allowed list").
- unknown: anything else (a person's reply, spam sent to the bounce address...).
"""

from __future__ import annotations

import re
from typing import Final

from campaign_client.bounces.mime import Reading

_DAEMON_FROM: Final = re.compile(
    r"mailer-daemon|mail[ ._-]?delivery|postmaster|mdaemon|mail administrator|system administrator"
    r"|mail delivery (?:system|subsystem|service)|delivery subsystem|e500_smtp|jetmail|\bimss@"
    r"|antivirus|virus ?wall|internet mail delivery|interscan|post office|mailer@|bounce[s]?@"
    r"|\bnoreply@.*(?:google|yahoo)|no-?reply@sns|mail ?gateway|smtp_mail_service",
    re.IGNORECASE,
)
_FAILURE_SUBJECT: Final = re.compile(
    r"undeliver|undelivered|delivery (?:status )?notification|delivery (?:failure|failed|"
        r"problem|report|error|has failed|notification)"
    r"|returned mail|returned to sender|mail delivery|failure notice|non[- ]?delivery|"
        r"could not be delivered"
    r"|not delivered|failed mail|mail failed|message status|delivery failure|"
        r"delivery warning|delayed mail"
    r"|warning: (?:message|could)|mail system error|nondeliverable|rejected:|"
        r"failed delivery|processing error"
    r"|unzustellbar|nicht zugestellt|onbestelbaar|non remis|non recapitabile|no se puede entregar"
    r"|no entregado|n.o entregue|olevererbart|ikke levert|toimittamaton|niedostarczalne|"
        r"nedoru.iteln"
    r"|не доставлено|недоставлен|не может быть доставлено|您的邮件|退信|系统退信"
    r"|mail error|user unknown"
    r"|no such user|message delayed|utilisateur non recens|automatically rejected|"
        r"message you sent blocked",
    re.IGNORECASE,
)
_FAILURE_TEXT: Final = re.compile(
    r"could not be delivered|couldn'?t be delivered|was not delivered|were not delivered|"
        r"not be delivered"
    r"|permanent (?:fatal )?error|delivery (?:has )?failed|failed permanently|undeliverable|"
        r"did not reach"
    r"|following address(?:\(?es\)?)? failed|unable to deliver|wasn'?t able to deliver|"
        r"delivery to the following"
    r"|message could not|has not yet been delivered|not yet been delivered|"
        r"could not deliver|was rejected"
    r"|returned to you|delivery status notification|mail delivery failed|rejected by|"
        r"no such user|user unknown"
    r"|n'a pas pu .tre (?:remis|d.livr)|konnte nicht zugestellt|nicht zugestellt werden|"
        r"no (?:pudo|se pudo) ser entregado"
    r"|n.o p[oô]de ser entregue|non . stato possibile|не может быть доставлено|"
        r"не удалось доставить|无法发送|無法|could not be sent|not a valid user|that's not a valid|"
        r"not accepting mail",
    re.IGNORECASE,
)
_AUTO_SUBJECT: Final = re.compile(
    r"auto(?:matic|matique|matische|matyczna|matico|matica)?[ -]?(?:reply|response|"
        r"responder|r.ponse|antwort|odpowied|respuesta|risposta|resposta|svar|antwoord)"
    r"|^auto:|out of (?:the )?office|\bvacation\b|\baway from\b|\bon holiday\b|\babsen(?:ce|"
        r"t|z|te)\b|abwesen"
    r"|cong.s|urlaub|ferien|vacances|vacaciones|vacanza|ausente|fuera de la oficina|buiten kantoor"
    r"|poza biurem|nieobecno|автоответ|отпуск|atvaļinājum|atvalinajum|automatinis|automaattinen"
    r"|thank(?:s| you) for (?:your|contacting)|we (?:have )?received your|ticket received|"
        r"autoreply|auto-reply"
    r"|autoresponder|out-of-office|ooo\b|i am away",
    re.IGNORECASE,
)
_AUTO_TEXT: Final = re.compile(
    r"out of (?:the )?office|i am (?:currently )?(?:away|on (?:vacation|holiday|leave)|"
        r"out of)|i'?m (?:currently )?(?:away|out of)"
    r"|on (?:annual )?leave|will be back|be back (?:on|in)|return(?:ing)? (?:on|"
        r"to the office)|limited access to (?:e-?mail|my e-?mail)"
    r"|this is an automat(?:ed|ic) (?:reply|response|message)|automatic(?:ally)? (?:reply|"
        r"response|generated reply)"
    r"|thank you for (?:your )?(?:e-?mail|message|contacting)|thanks for your (?:e-?mail|message)"
    r"|gracias por (?:contactar|su mensaje|tu mensaje)|merci pour votre|"
        r"vielen dank f.r ihre|je suis absent|ich bin (?:bis|vom|nicht)"
    r"|estoy fuera|sono assente|until further notice|during my absence|in my absence|"
        r"in dringenden f.llen"
    r"|has been received and will be|we will (?:get back|respond|reply)|allowed list|"
        r"whitelist.{0,40}(?:click|verify)"
    r"|verify (?:that )?you are (?:a )?human|sender not pre-approved|challenge|protected by \w+",
    re.IGNORECASE,
)
_COMPLAINT_SUBJECT: Final = re.compile(
    r"complaint about message|abuse report|feedback report|fbl", re.I
)
_COMPLAINT_WORDS: Final = re.compile(r"abuse|arf|feedback", re.I)
_FEEDBACK_FIELD: Final = re.compile(r"^feedback-type:\s*\S+", re.I | re.M)


def is_complaint(reading: Reading) -> bool:
    report_type = str(reading.message.get_param("report-type", "") or "").lower()
    if report_type == "feedback-report" or reading.feedback_blocks:
        return True
    if _FEEDBACK_FIELD.search(reading.text) and _COMPLAINT_WORDS.search(reading.text):
        return True
    subject = reading.header("Subject")
    sender = reading.header("From")
    return bool(_COMPLAINT_SUBJECT.search(subject)) and bool(
        re.search(r"staff@hotmail|abuse|fbl|feedback|scomp@", sender, re.I))


def bounce_score(reading: Reading, has_dsn: bool, failures: int) -> int:
    """How strongly the message says "delivery failed" (0: not at all)."""
    score = 0
    if has_dsn or reading.has_report_part:
        score += 3
    if reading.header("X-Failed-Recipients"):
        score += 3
    sender = reading.header("From")
    return_path = reading.header("Return-Path")
    subject = reading.header("Subject")
    if _DAEMON_FROM.search(sender) or return_path.strip() == "<>" or sender.strip() in ("<>", ""):
        score += 1
    if _FAILURE_SUBJECT.search(subject):
        score += 1
    if _FAILURE_TEXT.search(reading.text[:3000]):
        score += 1
    if failures:
        score += 1
    return score


def is_auto_reply(reading: Reading) -> bool:
    auto = reading.header("Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    if reading.header("X-Autoreply") or reading.header("X-Autorespond"):
        return True
    if reading.header("Precedence").lower() == "auto_reply":
        return True
    if reading.header("X-Auto-Response-Suppress") and auto.startswith("auto-generated"):
        return True
    subject = reading.header("Subject")
    if _AUTO_SUBJECT.search(subject):
        return True
    return bool(_AUTO_TEXT.search(reading.text[:1500]))
