"""memalign-mcp: LLM judges aligned with human feedback, served over MCP."""

__version__ = "0.1.0"
