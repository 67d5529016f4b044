"""Chatting with a chat model: a conversation's history, replies streamed as they are generated, and
the terminal loop behind `python -m model.chat`.

Each reply continues the chat template's prompt (model/data/chat.py: the conversation, then
<|assistant|>) until the model writes <|end|> or max_new_tokens run out. The history is cut to the
context: the prompt keeps the newest turns that fit block_size minus the room kept for the reply
(a system message always stays).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from model.data.chat import Message, fit_history, prompt_ids, prompt_room
from model.data.tokenizer import ChatTokenizer
from model.nn.gpt import GPT
from model.sampling.generate import generate_text

HELP = "commands: /help, /reset clears the history (the system prompt stays), /system TEXT sets the system prompt " \
       "(/system alone removes it), /quit ends (so do Ctrl-D and Ctrl-C)"


@dataclass
class SamplingOptions:
    """How replies are sampled: sample.py's options (model/cli.py add_sampling_flags)."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = 1337


class ChatSession:
    """One conversation with a model: the system prompt, the turns so far, and the next reply.

    Reply number n is sampled with seed + n, so the same seed and the same messages give the same
    conversation."""

    def __init__(self, model: GPT, tok: ChatTokenizer, options: SamplingOptions, system: str | None = None):
        self.model = model
        self.tok = tok
        self.options = options
        self.system = system or None
        self.turns: list[Message] = []
        self.replies = 0
        self.dropped = 0
        """How many of the oldest turns the last prompt left out to fit the context."""

    @property
    def room(self) -> int:
        """Tokens the prompt may take (model/data/chat.py prompt_room)."""
        return prompt_room(self.model.config.block_size, self.options.max_new_tokens)

    def messages(self) -> list[Message]:
        """The whole conversation: the system message, if any, then every turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def reset(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.turns = []

    def set_system(self, text: str | None) -> None:
        """Set the system prompt (None or empty: none); the turns stay."""
        self.system = text or None

    def prompt(self, user: str) -> list[int]:
        """The ids the model continues to answer `user`: the history that fits, the message, <|assistant|>."""
        messages = self.messages() + [{"role": "user", "content": user}]
        kept = fit_history(self.tok, messages, self.room)
        self.dropped = len(messages) - len(kept)
        return prompt_ids(self.tok, kept)[-self.room:]  # a lone message too long for the room loses its start

    def reply(self, user: str, write: Callable[[str], None] = lambda text: None) -> str:
        """Answer `user`: pass the reply's text to `write` piece by piece as it is generated, add the
        exchange to the history and return the reply."""
        o = self.options
        seed = None if o.seed is None else o.seed + self.replies
        pieces = generate_text(self.model, self.tok, [self.prompt(user)], o.max_new_tokens, o.temperature, o.top_k,
                               o.top_p, o.stop, seed, stop_tokens=(self.tok.end_id,))
        text = ""
        for _, piece in pieces:
            write(piece)
            text += piece
        self.replies += 1
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return text


def chat_loop(session: ChatSession, read: Callable[[], str | None], write: Callable[[str], None],
              note: Callable[[str], None]) -> None:
    """The interactive chat: `read` gives the user's next line (None at the end of input), replies
    stream through `write` (each ended by a newline), and what the loop says about itself (commands,
    history cut to fit) goes to `note`. Ends at /quit, the end of input or Ctrl-C."""
    try:
        while (line := read()) is not None:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command, _, rest = line.partition(" ")
                if command == "/quit":
                    return
                if command == "/reset":
                    session.reset()
                    note("(history cleared)")
                elif command == "/help":
                    note(HELP)
                elif command == "/system":
                    session.set_system(rest.strip())
                    note(f"(system prompt: {session.system})" if session.system else "(no system prompt)")
                else:
                    note(f"unknown command {command}; {HELP}")
                continue
            session.reply(line, write)
            write("\n")
            if session.dropped:
                note(f"(the {session.dropped} oldest message(s) no longer fit the context: left out)")
    except KeyboardInterrupt:
        write("\n")
