#!/usr/bin/env python3
"""Record transformers' rendering of chat templates for babelrl's `text::chat` tests.

Writes tests/fixtures/chat-templates.json: for each template (SmolLM2's, read from its GGUF; a
Qwen2.5-style template with tools, copied literally below; a template using Python string methods,
loop controls and namespace) and each conversation, the string that transformers'
`render_jinja_template` (the renderer behind `apply_chat_template`) produces, with the special-token
strings it passes as `bos_token` / `eos_token`.

Run with the fixtures venv (transformers, gguf):
    /root/.venvs/fixtures/bin/python scripts/chat_template_fixture.py
"""

import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat-templates.json")
CACHE = os.environ.get("BABELRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "babelrl"))
SMOLLM2 = os.path.join(CACHE, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Qwen2.5-Instruct's template (as shipped in its tokenizer_config.json and GGUF).
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Exercises what HF templates lean on: bos_token, .strip()/.startswith()/.upper(), namespace,
# loop controls, trim_blocks + lstrip_blocks (block tags on their own indented lines), `is string`.
PYCOMPAT = """{{ bos_token }}
{% set ns = namespace(sys='') %}
{% for m in messages %}
    {% if m.role == 'system' %}
        {% set ns.sys = m.content.strip() %}
        {% continue %}
    {% endif %}
    {% if m.content.startswith('STOP') %}{% break %}{% endif %}
[{{ m.role.upper() }}]{% if ns.sys and loop.index0 == 1 %} ({{ ns.sys }}){% endif %}: {{ m.content.strip() if m.content is string else '' }}
{% endfor %}
{% if add_generation_prompt %}[ASSISTANT]:{% else %}{{ eos_token }}{% endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "  You are a concise translator.  "},
        {"role": "user", "content": "Translate to German: Good morning. Café at 9:30?"},
        {"role": "assistant", "content": "Guten Morgen. Café um 9:30?"},
        {"role": "user", "content": "  And in Tibetan? བཀྲ་ཤིས་བདེ་ལེགས། 😊 "},
    ],
    [
        {"role": "user", "content": "line one\nline two\n\n"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "STOP here"},
        {"role": "assistant", "content": "never shown by the pycompat template"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "sunny"},
    ],
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city, in °C <metric> & \"quoted\"",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
                "required": ["city"],
            },
        },
    }
]


def smollm2_template():
    from gguf import GGUFReader

    if not os.path.exists(SMOLLM2):
        sys.exit(f"{SMOLLM2} is missing: run scripts/fetch_models.sh first")
    return GGUFReader(SMOLLM2).fields["tokenizer.chat_template"].contents()


def main():
    templates = [
        ("smollm2", smollm2_template(), "<|im_start|>", "<|im_end|>"),
        ("qwen2.5", QWEN25, "", "<|im_end|>"),
        ("pycompat", PYCOMPAT, "<s>", "</s>"),
    ]
    cases = []
    for name, template, bos, eos in templates:
        for ci, conv in enumerate(CONVERSATIONS):
            for agp in (True, False):
                for tools in ([None, TOOLS] if name == "qwen2.5" else [None]):
                    rendered, _ = render_jinja_template(
                        conversations=[conv],
                        tools=tools,
                        chat_template=template,
                        add_generation_prompt=agp,
                        bos_token=bos,
                        eos_token=eos,
                    )
                    case = {"template": name, "conversation": ci, "add_generation_prompt": agp,
                            "rendered": rendered[0]}
                    if tools is not None:
                        case["tools"] = tools
                    cases.append(case)
    import transformers

    doc = {
        "producer": "scripts/chat_template_fixture.py",
        "method": "transformers.utils.chat_template_utils.render_jinja_template (apply_chat_template's renderer)",
        "versions": {"transformers": transformers.__version__},
        "templates": {name: {"source": t, "bos_token": b, "eos_token": e} for name, t, b, e in templates},
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
