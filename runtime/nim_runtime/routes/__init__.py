"""HTTP routes: the OpenAI API (served by vLLM's serving layer), NIM management, and Llama Stack."""
