"""Conversations through the base model's own chat template (Qwen2.5-VL's ChatML, or any Jinja template that
ends each turn with the tokenizer's EOS token), with the same interface as `ConversationEncoder`.

The template renders the whole conversation, as the model's processor does; the ids are those of the rendered
text, each image placeholder expanded to the image's own number of tokens. Labels cover each answer and the
EOS that closes its turn. The prompts go after the template's system turn (`lead` tokens), which every
sequence starts with.
"""

from __future__ import annotations

from typing import Any

from modalprompt.data.datasets import IGNORE_INDEX, IMAGE_PLACEHOLDER, instruction_clip_tokens
from modalprompt.errors import DataError

# a user message whose place in the rendered text marks where the system turn ends
_PROBE = "modalprompt-probe"


class ChatTemplateEncoder:
    """Tokenises records with the tokenizer's chat template; loss only on the answers and their EOS."""

    def __init__(self, tokenizer, clip_tokenizer, image_token: str, max_length: int):
        self.tokenizer = tokenizer
        self.clip_tokenizer = clip_tokenizer
        self.image_token = image_token  # the placeholder the template writes for an image, e.g. <|image_pad|>
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.max_length = max_length
        self.clip_max_length = min(int(getattr(clip_tokenizer, "model_max_length", 77) or 77), 77)
        self.system_ids = self._ids(self._system_prefix())

    @property
    def lead(self) -> int:
        """Tokens of every sequence that stay before the prompts: the template's system turn."""
        return len(self.system_ids)

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _system_prefix(self) -> str:
        """The rendered text before the first user turn: through the first EOS (end of the system turn) and
        the white space after it; without a system turn, the BOS if the template writes one, else nothing."""
        text = self._render([{"role": "user", "content": _PROBE}], generation_prompt=True)
        head = text[: text.index(_PROBE)]
        eos = self.tokenizer.eos_token
        if eos and eos in head:
            end = head.index(eos) + len(eos)
            return head[: end + len(head[end:]) - len(head[end:].lstrip())]
        bos = self.tokenizer.bos_token
        return bos if bos and head.startswith(bos) else ""

    @staticmethod
    def _user(text: str) -> dict[str, Any]:
        """A user message; with images, a list of parts in the order of the <image> placeholders."""
        if IMAGE_PLACEHOLDER not in text:
            return {"role": "user", "content": text}
        parts: list[dict[str, str]] = []
        for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                parts.append({"type": "image"})
            if chunk.strip():
                parts.append({"type": "text", "text": chunk.strip()})
        return {"role": "user", "content": parts}

    def _expand(
        self, ids: list[int], labels: list[int], image_tokens: int | None
    ) -> tuple[list[int], list[int]]:
        """Each image placeholder becomes the image's `image_tokens` tokens (never in the labels)."""
        if self.image_token_id not in ids:
            return ids, labels
        if image_tokens is None:
            raise DataError(
                "a sample with an image needs its image's token count (the image preprocessing gives it)"
            )
        out_ids: list[int] = []
        out_labels: list[int] = []
        for token, label in zip(ids, labels, strict=True):
            if token == self.image_token_id:
                out_ids += [token] * image_tokens
                out_labels += [IGNORE_INDEX] * image_tokens
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def _check_lead(self, ids: list[int], text: str) -> None:
        if ids[: self.lead] != self.system_ids:
            raise DataError(
                f"the chat template's rendering {text[:200]!r} does not start with its system turn "
                f"{self.tokenizer.decode(self.system_ids)!r}: the prompts would not sit after it"
            )

    def encode_conversation(
        self, turns: list[tuple[str, str]], image_tokens: int | None = None
    ) -> tuple[list[int], list[int]]:
        """turns: (human, assistant) pairs. Returns input ids and labels (each answer and its turn's EOS).

        The conversation is rendered once; it is tokenised in pieces cut where each generation prompt ends and
        where each answer's EOS ends, and the pieces must give the ids of the whole text (they do when the
        cuts fall on token boundaries, as after ChatML's '\\n' and special tokens)."""
        messages: list[dict[str, Any]] = []
        cuts: list[tuple[int, bool]] = []  # (end of a piece in the rendered text, whether it is an answer)
        eos = self.tokenizer.eos_token
        whole = ""
        for human, answer in turns:
            messages.append(self._user(human))
            prompt = self._render(messages, generation_prompt=True)
            messages.append({"role": "assistant", "content": answer})
            earlier, whole = whole, self._render(messages, generation_prompt=False)
            if not (prompt.startswith(earlier) and whole.startswith(prompt)):
                raise DataError(
                    "the chat template does not render a conversation as its earlier turns followed by the "
                    f"generation prompt and the answer: {whole[:200]!r}"
                )
            reply = whole[len(prompt) :]
            closed = reply.index(eos) + len(eos) if eos and eos in reply else len(reply)
            cuts += [(len(prompt), False), (len(prompt) + closed, True), (len(whole), False)]
        ids: list[int] = []
        labels: list[int] = []
        start = 0
        for end, is_answer in cuts:
            piece = self._ids(whole[start:end]) if end > start else []
            ids += piece
            labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
            start = end
        if ids != self._ids(whole):
            raise DataError(
                "the chat template's text does not tokenise the same in pieces (prompt, answer) as whole: "
                f"{whole[:200]!r}"
            )
        self._check_lead(ids, whole)
        ids, labels = self._expand(ids, labels, image_tokens)
        if self.image_token_id in ids[self.max_length :]:
            raise DataError(
                f"max_length {self.max_length} cuts through the image tokens: raise training.max_length"
            )
        return ids[: self.max_length], labels[: self.max_length]

    def encode_question(self, question: str, image_tokens: int | None = None) -> list[int]:
        """The evaluation prompt: the rendered user turn and the generation prompt, as in training."""
        text = self._render([self._user(question)], generation_prompt=True)
        ids = self._ids(text)
        self._check_lead(ids, text)
        return self._expand(ids, ids, image_tokens)[0]

    def clip_tokens(self, instruction: str) -> list[int]:
        return instruction_clip_tokens(self.clip_tokenizer, instruction, self.clip_max_length)
