# ConsentLine on gunicorn, as the Procfile runs it (compose.yaml adds Postgres).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8000
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home consentline && chown -R consentline /app
USER consentline
EXPOSE 8000
# The release step, then the web: the Procfile's two commands.
CMD ["sh", "-c", "flask --app app db upgrade && gunicorn wsgi:app --bind 0.0.0.0:$PORT"]
