"""The language codes of a multilingual checkpoint's tokenizer, and the one a run's languages name.

mBART-50, M2M100 and NLLB-200 mark every sentence with a language code, a special token of their vocabulary:

    mBART-50   en_XX, de_DE, fr_XX, zh_CN, ... (52)      [en_XX] X </s>  ->  [de_DE] Y </s>
    M2M100     __en__, __de__, __fr__, ... (100)         [__en__] X </s> ->  [__de__] Y </s>
    NLLB-200   eng_Latn, deu_Latn, zho_Hans, ... (202)   [eng_Latn] X </s> -> [deu_Latn] Y </s>

A run names its languages as its data does (`data.src_lang=en`, the files' suffix or the `translation` column's
key) or gives the codes themselves (`data.src_code=en_XX`). `resolve_code` turns either into the tokenizer's code:
the code itself when the tokenizer has it, else the one code of that language, by its ISO 639-1 or 639-3 name
(en -> en_XX for mBART-50, __en__ for M2M100, eng_Latn for NLLB); a language with no code or with several (NLLB's
zh -> zho_Hans, zho_Hant) is one error listing the close codes. Nothing here imports transformers: it reads the
tokenizer object it is handed. Floor: hf/."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from prunelab.errors import UserError

# The spellings of the families' codes: mBART (ll_CC), NLLB (lll_Scrp), M2M100 (__ll__).
CODE = re.compile(r"[a-z]{2,3}_[A-Z]{2}|[a-z]{3}_[A-Z][a-z]{3}|__[a-z]{2,3}__")

# ISO 639-1 -> ISO 639-3 (mBART-50 and M2M100 name languages by the first, NLLB by the second: a corpus's `en` is
# NLLB's eng). A macrolanguage maps to its macrolanguage code (ar -> ara, zh -> zho), which NLLB spells by its
# varieties (arb_Arab, zho_Hans / zho_Hant): those stay an error listing them, never a guess.
ISO_639_3 = dict(
    pair.split(":")
    for pair in """
    aa:aar ab:abk ae:ave af:afr ak:aka am:amh an:arg ar:ara as:asm av:ava ay:aym az:aze ba:bak be:bel bg:bul bi:bis
    bm:bam bn:ben bo:bod br:bre bs:bos ca:cat ce:che ch:cha co:cos cr:cre cs:ces cu:chu cv:chv cy:cym da:dan de:deu
    dv:div dz:dzo ee:ewe el:ell en:eng eo:epo es:spa et:est eu:eus fa:fas ff:ful fi:fin fj:fij fo:fao fr:fra fy:fry
    ga:gle gd:gla gl:glg gn:grn gu:guj gv:glv ha:hau he:heb hi:hin ho:hmo hr:hrv ht:hat hu:hun hy:hye hz:her ia:ina
    id:ind ie:ile ig:ibo ii:iii ik:ipk io:ido is:isl it:ita iu:iku ja:jpn jv:jav ka:kat kg:kon ki:kik kj:kua kk:kaz
    kl:kal km:khm kn:kan ko:kor kr:kau ks:kas ku:kur kv:kom kw:cor ky:kir la:lat lb:ltz lg:lug li:lim ln:lin lo:lao
    lt:lit lu:lub lv:lav mg:mlg mh:mah mi:mri mk:mkd ml:mal mn:mon mr:mar ms:msa mt:mlt my:mya na:nau nb:nob nd:nde
    ne:nep ng:ndo nl:nld nn:nno no:nor nr:nbl nv:nav ny:nya oc:oci oj:oji om:orm or:ori os:oss pa:pan pi:pli pl:pol
    ps:pus pt:por qu:que rm:roh rn:run ro:ron ru:rus rw:kin sa:san sc:srd sd:snd se:sme sg:sag si:sin sk:slk sl:slv
    sm:smo sn:sna so:som sq:sqi sr:srp ss:ssw st:sot su:sun sv:swe sw:swa ta:tam te:tel tg:tgk th:tha ti:tir tk:tuk
    tl:tgl tn:tsn to:ton tr:tur ts:tso tt:tat tw:twi ty:tah ug:uig uk:ukr ur:urd uz:uzb ve:ven vi:vie vo:vol wa:wln
    wo:wol xh:xho yi:yid yo:yor za:zha zh:zho zu:zul
    """.split()
)
ISO_639_1 = {three: two for two, three in ISO_639_3.items()}


def language_codes(hf: Any) -> dict[str, int]:
    """The language codes of a Hugging Face tokenizer: {code token: id}, in id order; empty for a tokenizer of one
    language pair (Marian, T5, BART). The codes are its special tokens spelled as a family spells them."""
    tokens: Iterable[str] = getattr(hf, "all_special_tokens", None) or []
    found = {str(t) for t in tokens if CODE.fullmatch(str(t))}
    ids = {t: hf.convert_tokens_to_ids(t) for t in found}
    unk = getattr(hf, "unk_token_id", None)
    return dict(sorted(((t, i) for t, i in ids.items() if i is not None and i != unk), key=lambda ti: ti[1]))


def language(code: str) -> str:
    """The language a code is of: en_XX -> en, eng_Latn -> eng, __en__ -> en."""
    return code.strip("_").split("_")[0]


def same_language(lang: str, code: str) -> bool:
    """Whether `code` is of language `lang`, an ISO 639-1 or 639-3 name: en and eng are both eng_Latn's and en_XX's."""
    of = language(code)
    return lang in (of, ISO_639_3.get(of), ISO_639_1.get(of))


def close_codes(query: str, codes: Iterable[str], n: int = 8) -> list[str]:
    """The codes a mistyped or unknown `query` may have meant: those of a language starting as it does (de ->
    deu_Latn, de_DE), then the most similar spellings."""
    codes = list(codes)
    head = language(query)[:2].lower()
    near = [c for c in codes if head and language(c).lower().startswith(head)]
    langs = {language(c): c for c in codes}
    similar = difflib.get_close_matches(language(query), list(langs), n=n, cutoff=0.6)
    near += [langs[x] for x in similar if langs[x] not in near]
    near += [c for c in difflib.get_close_matches(query, codes, n=n, cutoff=0.6) if c not in near]
    return near[:n]


def _close(near: list[str]) -> str:
    return f" (close: {', '.join(near)})" if near else ""


def resolve_code(codes: Mapping[str, int], code: str | None, lang: str | None, side: str, where: str) -> str | None:
    """The tokenizer's code for one side (`side`: src / tgt): `code` (data.{side}_code) when given, which must be
    one of `codes`; else derived from `lang` (data.{side}_lang): that code exactly, or the one code of that
    language. None when the tokenizer has no codes and none was asked for. One UserError otherwise, naming the
    setting, the tokenizer (`where`) and the codes close to what was asked."""
    if not codes:
        if code is not None:
            raise UserError(f"data.{side}_code={code}: the tokenizer in {where} has no language codes (leave it null)")
        return None
    if code is not None:
        if code in codes:
            return code
        near = close_codes(code, codes)
        raise UserError(f"data.{side}_code={code}: not a language code of the tokenizer in {where}{_close(near)}")
    if lang is None:
        raise UserError(
            f"the tokenizer in {where} is multilingual ({len(codes)} language codes, e.g. "
            f"{', '.join(list(codes)[:3])}): set data.{side}_lang to a language it has, or data.{side}_code to one "
            "of its codes"
        )
    if lang in codes:
        return lang
    matches = [c for c in codes if same_language(lang, c)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(
            f"data.{side}_lang={lang}: the tokenizer in {where} has several codes of that language "
            f"({', '.join(matches)}); set data.{side}_code to one of them"
        )
    near = close_codes(lang, codes)
    raise UserError(
        f"data.{side}_lang={lang}: the tokenizer in {where} has no language code {lang!r} nor one of that language"
        f"{_close(near)}; set data.{side}_code to one of its codes"
    )


def hf_language(hf: Any, code: str) -> str:
    """The name the Hugging Face tokenizer's src_lang / tgt_lang take for `code`: the code itself, except for
    M2M100, whose tokenizer names languages without the underscores of their tokens (__en__ -> en)."""
    names = getattr(hf, "lang_code_to_token", None)
    if isinstance(names, Mapping):
        for name, token in names.items():
            if token == code:
                return str(name)
    return code
