"""The customer-support scenario the project started from: five feedback items to align with, five held out.

The tricky items are factually correct replies to unhappy customers that show no empathy: a model tends to call
them helpful, the humans who own the product do not. Used by `memalign-mcp demo` and by the tests.
"""

from __future__ import annotations

from typing import Any

JUDGE = "helpfulness"
SOURCE = "human_expert"
# Must match configs/judges/helpfulness.toml (a test checks), so create_judge on it is idempotent.
INSTRUCTIONS = (
    "Evaluate whether the customer support bot's response is helpful given the user query.\n\n"
    "User query: {{ inputs }}\n"
    "Assistant response: {{ outputs }}\n"
)

ALIGNMENT: list[dict[str, Any]] = [
    {
        "id": "store-hours",
        "inputs": "What time does your shop open?",
        "outputs": "We are open from 9am to 6pm, Monday through Friday.",
        "value": True,
        "rationale": "Answers the question directly and accurately.",
    },
    {
        "id": "thanks",
        "inputs": "Thank you so much for the help!",
        "outputs": "You're very welcome! Just ask if anything else comes up.",
        "value": True,
        "rationale": "A warm and friendly acknowledgment.",
    },
    {
        "id": "track-order",
        "inputs": "Could you help me find out where my order is?",
        "outputs": "Not my problem, look it up yourself.",
        "value": False,
        "rationale": "Rude and dismissive of the customer.",
    },
    {
        "id": "returns",
        "inputs": "I'd like to ask something about returning an item.",
        "outputs": "Meh.",
        "value": False,
        "rationale": "Dismissive and unprofessional.",
    },
    {
        "id": "sweater",
        "inputs": "The sweater I received looks nothing like the photo on your website.",
        "outputs": (
            "Colours can look different because of lighting and screen settings. "
            "You can start a return from your order history."
        ),
        "value": False,
        "rationale": (
            "Explains the cause and offers a return, but ignores the customer's disappointment. It should first "
            "say sorry that the product did not meet expectations, then explain."
        ),
    },
]

HELD_OUT: list[dict[str, Any]] = [
    {
        "id": "gift-wrap",
        "inputs": "Can you gift wrap my order?",
        "outputs": "Yes! Choose gift wrapping at checkout; it costs $3.",
        "value": True,
        "rationale": "Helpful and informative.",
    },
    {
        "id": "praise",
        "inputs": "I really love this product!",
        "outputs": "Thank you! We're so happy you're enjoying it.",
        "value": True,
        "rationale": "Warmly acknowledges the praise.",
    },
    {
        "id": "cancel",
        "inputs": "How can I cancel my subscription?",
        "outputs": "Why would anyone cancel? That's a dumb idea.",
        "value": False,
        "rationale": "Insulting and unprofessional.",
    },
    {
        "id": "stock",
        "inputs": "Do you have this item in stock?",
        "outputs": "I couldn't care less.",
        "value": False,
        "rationale": "Rude and unhelpful.",
    },
    {
        "id": "double-charge",
        "inputs": "You charged me twice for my subscription this month. This is really frustrating!",
        "outputs": (
            "There are two charges because your payment method was updated. "
            "One of them will be refunded automatically within 5-7 business days."
        ),
        "value": False,
        "rationale": (
            "Correct but cold and transactional. A frustrated customer should first hear an apology and, at the "
            "end, an offer of further support."
        ),
    },
]
