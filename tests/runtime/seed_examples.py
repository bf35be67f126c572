"""The example requests of NIM's API reference pages (``../shared/seeds/*.txt``), as data.

Each example is the page's curl command, character for character; :func:`parse_curl` turns one into the
request it sends. The pages live outside the repository, so the commands are transcribed here, and
:func:`examples_in` reads them out of the pages where they are present, so a test can check that the
transcription still says what the pages say.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: Where the reference pages are in the workspace this repository is developed in (design.md: seeds/).
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"

LLM_PAGE = "nim-llm-api-reference.txt"
VLM_PAGE = "nim-vlm-api-reference.txt"

#: (page, curl command) for every example, in page order.
EXAMPLES: list[tuple[str, str]] = [
    (
        LLM_PAGE,
        """curl -s http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "meta/llama-3.1-8b-instruct",
    "messages": [{"role": "user", "content": "What is GPU computing?"}],
    "max_tokens": 256
  }'""",
    ),
    (
        LLM_PAGE,
        """curl -s http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "meta/llama-3.1-8b-instruct",
    "messages": [{"role": "user", "content": "Explain transformers briefly."}],
    "stream": true
  }'""",
    ),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/models"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/health/live"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/health/ready"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/metrics"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/version"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/metadata"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/manifest"),
    (LLM_PAGE, "curl -s http://localhost:8000/v1/license"),
    (VLM_PAGE, "curl -X 'GET' 'http://0.0.0.0:8000/v1/models'"),
    (VLM_PAGE, "curl -X 'GET' 'http://0.0.0.0:8000/v1/health/ready'"),
    (VLM_PAGE, "curl -X 'GET' 'http://0.0.0.0:8000/v1/health/live'"),
    (
        VLM_PAGE,
        """curl -X 'POST' \\
'http://0.0.0.0:8000/v1/chat/completions' \\
    -H 'accept: application/json' \\
    -H 'Content-Type: application/json' \\
    -d '{
        "model": "meta/llama-3.2-11b-vision-instruct",
        "messages": [
            {
                "role":"user",
                "content": [
                    {
                        "type": "text",
                        "text": "What is in this image?"
                    },
                    {
                        "type": "image_url",
                        "image_url":
                            {
                                "url": "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
                            }
                    }
                ]
            }
        ],
        "max_tokens": 256
    }'""",
    ),
    (
        VLM_PAGE,
        """curl -X 'POST' \\
'http://0.0.0.0:8000/ls/inference/chat_completion' \\
    -H 'accept: application/json' \\
    -H 'Content-Type: application/json' \\
    -d '{
        "model": "meta/llama-3.2-11b-vision-instruct",
        "messages": [
            {
                "role":"user",
                "content": [
                    {
                        "image":
                            {
                                "uri": "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
                            }
                    },
                    "What is in this image?"
                ]
            }
        ]
    }'""",
    ),
]


@dataclass(frozen=True)
class CurlRequest:
    """What a curl command sends: method, path (with query), headers in order, and the body bytes."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def parse_curl(command: str) -> CurlRequest:
    """The request of a curl command using only what the pages use: ``-s``, ``-X``, ``-H`` and ``-d``.

    Anything else is refused, so a new kind of example cannot be sent differently from how curl would.
    """
    words = shlex.split(command.replace("\\\n", ""))  # a backslash-newline joins lines, as in a shell
    if words[0] != "curl":
        raise ValueError(f"not a curl command: {command[:40]!r}")
    method: str | None = None
    url: str | None = None
    headers: list[tuple[str, str]] = []
    body: bytes | None = None
    rest = iter(words[1:])
    for word in rest:
        match word:
            case "-s" | "--silent":
                pass
            case "-X" | "--request":
                method = next(rest)
            case "-H" | "--header":
                name, _, value = next(rest).partition(":")
                headers.append((name.strip(), value.strip()))
            case "-d" | "--data":
                # curl -d sends the bytes as given (newlines included, since the data is not read from a
                # file) and, unless told otherwise, as a form content type; every page sets its own.
                body = next(rest).encode()
            case _ if word.startswith("-"):
                raise ValueError(f"curl option {word} is not understood by this parser")
            case _:
                url = word
    if url is None:
        raise ValueError(f"no URL in {command[:40]!r}")
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return CurlRequest(method or ("POST" if body is not None else "GET"), path, tuple(headers), body)


def examples_in(page: Path) -> list[str]:
    """The curl commands of a reference page, as the page writes them.

    A command runs from a line starting with ``curl`` to the line where its quotes are closed and no
    backslash continues it.
    """
    commands: list[str] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not re.match(r"\s*curl\s", lines[i]):
            i += 1
            continue
        command = lines[i].strip()
        while _unfinished(command) and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]
        commands.append(command)
        i += 1
    return commands


def _unfinished(command: str) -> bool:
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command)
    except ValueError:  # an open quote
        return True
    return False
